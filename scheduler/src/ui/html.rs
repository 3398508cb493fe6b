//! HTML building for the dashboard: escaping, the page layout, and times as people read them.
//!
//! Every value that reaches a page passes through [`esc`] (text and attribute values alike);
//! the layout is filled in one pass, so a value that happens to contain `{{body}}` stays text.

use std::fmt::Write as _;

use crate::node::NodeStatus;

const LAYOUT: &str = include_str!("assets/layout.html");

/// Escapes `s` for HTML text and for quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a query-string component (`application/x-www-form-urlencoded`).
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Fills `{{key}}` markers of `template` with `values` in one pass; a value is never re-scanned.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let key = &after[..end];
                match values.iter().find(|(k, _)| *k == key) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The sections in the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Tasks,
    DeadLetters,
    Workers,
    Cluster,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/ui", "Overview"),
    (Section::Tasks, "/ui/tasks", "Tasks"),
    (Section::DeadLetters, "/ui/dead-letters", "Dead letters"),
    (Section::Workers, "/ui/workers", "Workers"),
    (Section::Cluster, "/ui/cluster", "Cluster"),
];

/// One line saying which node answered, its role, and how fresh its copy of the ledger is.
pub fn node_line(s: &NodeStatus, now_ms: i64) -> String {
    let behind = s.commit_index.saturating_sub(s.applied_index);
    let leader = match (s.is_leader, s.leader_id) {
        (true, _) => "the leader".to_owned(),
        (false, 0) => format!("a {} that knows no leader", s.role),
        (false, id) => format!("a {} of leader node {id}, heard {} ms ago", s.role, s.leader_heard_ms),
    };
    format!(
        "Answered by node {} ({leader}), term {}, applied index {} ({behind} behind its commit index) at {}",
        s.id,
        s.term,
        s.applied_index,
        utc(now_ms)
    )
}

/// A full page: `body` is HTML the caller built with [`esc`]; `title` is text.
pub fn page(section: Section, title: &str, node: &str, body: &str) -> String {
    let mut nav = String::new();
    for (s, href, label) in SECTIONS {
        let here = if s == section { " class=\"here\" aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{here}>{label}</a>");
    }
    fill(
        LAYOUT,
        &[
            ("title", &esc(title)),
            ("nav", &nav),
            ("node", &esc(node)),
            ("body", body),
            ("version", &esc(&format!("{} ({})", env!("CARGO_PKG_VERSION"), kiln_proto::metrics::COMMIT))),
        ],
    )
}

/// Milliseconds since the Unix epoch as `2026-12-03 07:37:05 UTC`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A ledger detail with its epoch-millisecond deadlines (`lease 3 until 1796228118629`) as times.
pub fn detail_with_times(detail: &str) -> String {
    let mut out = Vec::new();
    let mut after_until = false;
    for word in detail.split(' ') {
        let time = word.trim_end_matches([',', ';', ')']);
        match time.parse::<i64>() {
            Ok(ms) if after_until && ms > 1_000_000_000_000 => out.push(word.replacen(time, &utc(ms), 1)),
            _ => out.push(word.to_owned()),
        }
        after_until = word == "until";
    }
    out.join(" ")
}

/// A duration in milliseconds as `3 h 12 min`, `45 s`, `120 ms`.
pub fn span(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{} s", ms / 1000),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// Bytes as `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_stays_text() {
        assert_eq!(esc("<script>alert('x')</script>&\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;");
        let page = page(Section::Tasks, "<b>", "node {{body}}", "<p>ok</p>");
        assert!(page.contains("<title>&lt;b&gt; · Kiln</title>"), "{page}");
        assert!(page.contains("node {{body}}"), "a value is never filled in again: {page}");
        assert_eq!(page.matches("<p>ok</p>").count(), 1);
    }

    #[test]
    fn times_read_as_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_228_118_629), "2026-12-02 16:15:18 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(span(90_500), "1 min 30 s");
        assert_eq!(detail_with_times("lease 2 until 1796228118629"), "lease 2 until 2026-12-02 16:15:18 UTC");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(url_component("a b&c/é"), "a+b%26c%2F%C3%A9");
    }
}
