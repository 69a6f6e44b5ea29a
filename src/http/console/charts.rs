//! Charts drawn on the server as inline SVG (no script): bars for won revenue and commission by
//! month, the referral funnel and the leaderboard. Each chart is `<svg data-chart="…">` with a
//! `<title>`, and each bar carries its figure in a `<title>` of its own (the browser's tooltip).

use maud::{Markup, html};

use super::format::money;

/// One month's figures, as `Kpis.months` answers them.
pub struct Month {
    /// `YYYY-MM`.
    pub month: String,
    /// Won revenue (a decimal string).
    pub revenue: String,
    /// Net commission (a decimal string).
    pub commission: String,
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or(0.0)
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const AXIS: f64 = 24.0;

/// Won revenue and commission by month: one group of two bars per month with data.
pub fn revenue_by_month(months: &[Month], currency: &str) -> Markup {
    let max = months
        .iter()
        .flat_map(|m| [number(&m.revenue), number(&m.commission)])
        .fold(0.0_f64, f64::max);
    let slot = WIDTH / months.len().max(1) as f64;
    let bar = (slot * 0.35).min(40.0);
    let plot = HEIGHT - AXIS;
    let height = |v: f64| {
        if max > 0.0 {
            (v.max(0.0) / max) * (plot - 8.0)
        } else {
            0.0
        }
    };
    html! {
        svg data-chart="revenue-by-month" class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            role="img" aria-labelledby="revenue-by-month-title" {
            title id="revenue-by-month-title" { "Won revenue and commission by month (" (currency) ")" }
            line class="axis" x1="0" y1=(plot) x2=(WIDTH) y2=(plot) {}
            @for (i, m) in months.iter().enumerate() {
                @let x = i as f64 * slot + (slot - 2.0 * bar) / 2.0;
                @let revenue = height(number(&m.revenue));
                @let commission = height(number(&m.commission));
                g class="month" data-month=(m.month) {
                    rect class="bar revenue" x=(x) y=(plot - revenue) width=(bar) height=(revenue) {
                        title { (m.month) " won revenue: " (money(&m.revenue, currency)) }
                    }
                    rect class="bar commission" x=(x + bar) y=(plot - commission) width=(bar)
                        height=(commission) {
                        title { (m.month) " commission: " (money(&m.commission, currency)) }
                    }
                    text class="label" x=(x + bar) y=(HEIGHT - 6.0) text-anchor="middle" { (m.month) }
                }
            }
        }
    }
}

/// Horizontal bars, one a row: `(label, value, shown)`.
fn horizontal(name: &str, title: &str, rows: &[(String, f64, String)]) -> Markup {
    let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max);
    let row_height = 28.0;
    let label_width = 180.0;
    let height = (rows.len().max(1) as f64) * row_height + 8.0;
    let title_id = format!("{name}-title");
    html! {
        svg data-chart=(name) class="chart" viewBox=(format!("0 0 {WIDTH} {height}"))
            role="img" aria-labelledby=(title_id) {
            title id=(title_id) { (title) }
            @for (i, (label, value, shown)) in rows.iter().enumerate() {
                @let y = i as f64 * row_height + 4.0;
                @let width = if max > 0.0 { value.max(0.0) / max * (WIDTH - label_width - 120.0) } else { 0.0 };
                g class="row" {
                    text class="label" x="0" y=(y + 18.0) { (label) }
                    rect class="bar" x=(label_width) y=(y) width=(width) height=(row_height - 8.0) {
                        title { (label) ": " (shown) }
                    }
                    text class="value" x=(label_width + width + 6.0) y=(y + 18.0) { (shown) }
                }
            }
        }
    }
}

/// The referral funnel: submitted, accepted, deals attributed, won.
pub fn funnel(submitted: i64, accepted: i64, attributed: i64, won: i64) -> Markup {
    let rows: Vec<(String, f64, String)> = [
        ("Referrals submitted", submitted),
        ("Accepted", accepted),
        ("Deals attributed", attributed),
        ("Deals won", won),
    ]
    .into_iter()
    .map(|(label, n)| (label.to_string(), n as f64, n.to_string()))
    .collect();
    horizontal("funnel", "Referral funnel", &rows)
}

/// The leaderboard: partners by won revenue.
pub fn leaderboard(rows: &[(String, String)], currency: &str) -> Markup {
    let rows: Vec<(String, f64, String)> = rows
        .iter()
        .map(|(name, revenue)| (name.clone(), number(revenue), money(revenue, currency)))
        .collect();
    horizontal("leaderboard", "Partners by won revenue", &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_of_bars_per_month() {
        let months = vec![
            Month {
                month: "2026-10".into(),
                revenue: "1000.00".into(),
                commission: "200.00".into(),
            },
            Month {
                month: "2026-11".into(),
                revenue: "0".into(),
                commission: "-50.00".into(),
            },
        ];
        let svg = revenue_by_month(&months, "USD").into_string();
        assert_eq!(svg.matches("class=\"month\"").count(), 2);
        assert_eq!(svg.matches("class=\"bar revenue\"").count(), 2);
        assert!(svg.contains("data-month=\"2026-11\""));
        // The tallest bar fills the plot; a negative month draws no bar below the axis.
        assert!(svg.contains("height=\"188\""), "{svg}");
        assert!(svg.contains("2026-11 commission: -$50.00"), "{svg}");
    }

    #[test]
    fn labels_are_escaped() {
        let svg = leaderboard(&[("<b>Acme</b>".into(), "10".into())], "EUR").into_string();
        assert!(svg.contains("&lt;b&gt;Acme&lt;/b&gt;"));
        assert!(!svg.contains("<b>"));
    }
}
