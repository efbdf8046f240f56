//! The bench's SVG chart: one horizontal bar per run, its length the goodput, with
//! the link rate marked when the link was emulated. Hand-written SVG: a chart this
//! simple needs no plotting library.

use std::fmt::Write;

use super::Row;

const WIDTH: f64 = 860.0;
const LABEL: f64 = 250.0;
const BAR: f64 = 22.0;
const GAP: f64 = 8.0;
const TOP: f64 = 56.0;
const RIGHT: f64 = 110.0;

/// The chart of `rows`, as a standalone SVG document.
pub fn render(title: &str, rows: &[Row], link_rate: Option<u64>) -> String {
    let small = rows.iter().any(|r| r.batches_per_s.is_some());
    let value = |r: &Row| {
        if small {
            r.batches_per_s.unwrap_or(0.0)
        } else {
            r.mb_per_s
        }
    };
    let unit = if small { "batches/s" } else { "MB/s" };
    let link_mb = link_rate.filter(|_| !small).map(|r| r as f64 / 8e6);
    let max = rows
        .iter()
        .map(value)
        .chain(link_mb)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let plot = WIDTH - LABEL - RIGHT;
    let height = TOP + rows.len() as f64 * (BAR + GAP) + 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="12" y="24" font-size="16" font-weight="bold">{}</text><text x="12" y="44" fill="#555555">{} per run (higher is better)</text>"##,
        escape(title),
        unit
    );
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + i as f64 * (BAR + GAP);
        let v = value(row);
        let w = (v / max * plot).max(1.0);
        let colour = colour(row.cell.transport);
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{LABEL}" y="{y:.1}" width="{w:.1}" height="{BAR}" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            LABEL - 8.0,
            y + BAR * 0.7,
            escape(&row.cell.label()),
            LABEL + w + 6.0,
            y + BAR * 0.7,
            match (&row.error, small, row.ratio, &row.ratio_to) {
                (Some(_), ..) => "failed".to_string(),
                (None, false, Some(x), Some(to)) => format!("{v:.1} ({x:.2}× {to})"),
                _ => format!("{v:.1}"),
            }
        );
    }
    if let Some(link) = link_mb {
        let x = LABEL + link / max * plot;
        let bottom = TOP + rows.len() as f64 * (BAR + GAP);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#cc0000" stroke-dasharray="5,4"/><text x="{x:.1}" y="{:.1}" fill="#cc0000" text-anchor="middle">link {link:.1} MB/s</text>"##,
            TOP - 4.0,
            bottom + 16.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn colour(transport: &str) -> &'static str {
    match transport {
        "quic" => "#1f77b4",
        "raw-quic" => "#9ecae1",
        "https" => "#ff7f0e",
        "raw-https" => "#fdd0a2",
        _ => "#888888",
    }
}

/// Escapes text for an SVG text node.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
