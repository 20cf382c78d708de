//! Plain-text output: aligned tables as `kubectl get` prints them, ages as kubectl shows
//! them, and JSON/YAML for scripts.

use clap::ValueEnum;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// How a report is printed (`-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The report as JSON.
    Json,
    /// The report as YAML.
    Yaml,
}

/// The report as JSON or YAML; `None` for `table` (the caller renders its own text).
pub fn structured<T: Serialize>(report: &T, output: Output) -> anyhow::Result<Option<String>> {
    Ok(match output {
        Output::Table => None,
        Output::Json => Some(serde_json::to_string_pretty(report)? + "\n"),
        Output::Yaml => Some(serde_saphyr::to_string(report)?),
    })
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's compact age: `45s`, `12m`, `5h`, `3d`.
pub fn age(since: &str, now: Timestamp) -> String {
    let Ok(t) = since.parse::<Timestamp>() else {
        return since.to_owned();
    };
    let s = (now.as_second() - t.as_second()).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `-` for an empty cell, so columns stay readable.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_end_clean() {
        let t = table(
            &["NAME", "VALUE"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME    VALUE\na       1\nlonger\n");
    }

    #[test]
    fn ages_like_kubectl() {
        let now: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(age("2025-01-01T11:59:15Z", now), "45s");
        assert_eq!(age("2025-01-01T11:00:00Z", now), "60m");
        assert_eq!(age("2024-12-31T00:00:00Z", now), "36h");
        assert_eq!(age("2024-12-01T00:00:00Z", now), "31d");
    }
}
