//! Human tables and `--output json` for scripts.

use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as an aligned table; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{:<width$}  ", cell, width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Whether to colour output: not when `NO_COLOR` is set to anything (https://no-color.org).
pub fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A progress bar template without its colour styles (`{bar:40.cyan/blue}` → `{bar:40}`) when
/// colour is off.
pub fn bar_template(template: &str) -> String {
    if colour() {
        template.to_owned()
    } else {
        template.replace(".cyan/blue}", "}")
    }
}

pub fn ms_to_rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A ledger detail with its epoch-millisecond deadlines (`lease 3 until 1796228118629`) written
/// as times (`lease 3 until 2026-12-02T16:15:18.629Z`).
pub fn detail_with_times(detail: &str) -> String {
    let mut out = Vec::new();
    let mut after_until = false;
    for word in detail.split(' ') {
        let time = word.trim_end_matches([',', ';', ')']);
        match time.parse::<i64>() {
            Ok(ms) if after_until && ms > 1_000_000_000_000 => out.push(word.replacen(time, &ms_to_rfc3339(ms), 1)),
            _ => out.push(word.to_owned()),
        }
        after_until = word == "until";
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_in_details_read_as_times() {
        assert_eq!(detail_with_times("lease 1 until 1796228118629"), "lease 1 until 2026-12-02T16:15:18.629Z");
        assert_eq!(
            detail_with_times("from w-1 (lease 2, not started there); lease 3 until 1796228118629"),
            "from w-1 (lease 2, not started there); lease 3 until 2026-12-02T16:15:18.629Z"
        );
        assert_eq!(detail_with_times("queue default priority 0"), "queue default priority 0");
        assert_eq!(detail_with_times("retry 2 of 3"), "retry 2 of 3");
    }
}
