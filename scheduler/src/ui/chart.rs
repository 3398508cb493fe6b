//! The last hour as a server-side SVG: completions and failed attempts per minute. Drawn with
//! presentation attributes only (no `style`), so the strict Content-Security-Policy applies to it
//! unchanged, and served as an image: the page needs no script to show it.

use std::fmt::Write as _;

use super::sampler::{Minute, MINUTES};

const W: f64 = 900.0;
const H: f64 = 240.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

/// A "nice" axis maximum at or above `max`: 1, 2 or 5 times a power of ten.
fn nice(max: u64) -> u64 {
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if m * step >= max.max(1) {
                return m * step;
            }
        }
        step *= 10;
    }
}

/// The chart of `minutes` (oldest first) ending at minute `now`.
pub fn svg(minutes: &[Minute], now: i64) -> String {
    let visible: Vec<&Minute> = minutes.iter().filter(|m| now - m.minute < MINUTES as i64 && m.minute <= now).collect();
    let top = nice(visible.iter().map(|m| m.completions.max(m.failures)).max().unwrap_or(0));
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |minute: i64| LEFT + plot_w * (1.0 - (now - minute) as f64 / (MINUTES as f64 - 1.0));
    let y = |v: u64| TOP + plot_h * (1.0 - v as f64 / top as f64);
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" \
         font-family=\"system-ui, sans-serif\" font-size=\"11\" role=\"img\">\
         <title>Completions and failed attempts per minute, last hour</title>\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>"
    );
    for i in 0..=4u64 {
        let v = top * i / 4;
        let yy = y(v);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e3e7eb\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#5b6672\">{v}</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    for (ago, label) in [(59, "−60 min"), (45, "−45"), (30, "−30"), (15, "−15"), (0, "now")] {
        let xx = x(now - ago);
        let _ = write!(
            out,
            "<text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#5b6672\">{label}</text>",
            H - 10.0
        );
    }
    let bar = (plot_w / MINUTES as f64 * 0.4).max(1.0);
    for (series, colour, offset) in [(0, "#1b7f3b", -bar / 2.0), (1, "#b42318", bar / 2.0)] {
        for m in &visible {
            let v = if series == 0 { m.completions } else { m.failures };
            if v == 0 {
                continue;
            }
            let (xx, yy) = (x(m.minute) + offset - bar / 2.0, y(v));
            let _ = write!(
                out,
                "<rect x=\"{xx:.1}\" y=\"{yy:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{v}</title></rect>",
                TOP + plot_h - yy
            );
        }
    }
    if visible.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#5b6672\">No minutes observed yet: this node started \
             sampling less than a minute ago.</text>",
            W / 2.0,
            H / 2.0
        );
    }
    let _ = write!(
        out,
        "<rect x=\"{}\" y=\"2\" width=\"10\" height=\"10\" fill=\"#1b7f3b\"/><text x=\"{}\" y=\"11\">completions</text>\
         <rect x=\"{}\" y=\"2\" width=\"10\" height=\"10\" fill=\"#b42318\"/><text x=\"{}\" y=\"11\">failed attempts</text></svg>",
        W - 230.0,
        W - 216.0,
        W - 130.0,
        W - 116.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_a_round_maximum_and_old_minutes_are_left_out() {
        let minutes = [
            Minute { minute: 90, completions: 7, failures: 0 },
            Minute { minute: 150, completions: 3, failures: 2 },
            Minute { minute: 159, completions: 0, failures: 1 },
        ];
        let svg = svg(&minutes, 159);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#1b7f3b\"><title>").count(), 1, "only minute 150's completions: {svg}");
        assert_eq!(svg.matches("fill=\"#b42318\"><title>").count(), 2);
        assert!(svg.contains(">5</text>"), "axis top is 5 for a max of 3: {svg}");
        assert!(!svg.contains("style"), "no style attributes under the CSP");
        assert_eq!(nice(0), 1);
        assert_eq!(nice(11), 20);
        assert_eq!(nice(500), 500);
    }
}
