//! A progress bar on stderr: redrawn in place on a terminal, a line every
//! few seconds otherwise (logs, CI), silent when asked.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: usize,
    unit: &'static str,
    start: Instant,
    last_draw: Option<Instant>,
    tty: bool,
    quiet: bool,
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl Progress {
    pub fn new(label: &str, total: usize, unit: &'static str) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            unit,
            start: Instant::now(),
            last_draw: None,
            tty: std::io::stderr().is_terminal(),
            quiet: false,
        }
    }

    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Report `done` of `total`, with extra text (rates, losses) after it.
    pub fn update(&mut self, done: usize, extra: &str) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(10)
        };
        let finished = done >= self.total;
        if !finished && self.last_draw.is_some_and(|t| now - t < every) {
            return;
        }
        self.last_draw = Some(now);
        let elapsed = now - self.start;
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let eta = if done > 0 && !finished {
            let secs = elapsed.as_secs_f64() / done as f64 * (self.total - done) as f64;
            format!(" ETA {}", fmt_duration(Duration::from_secs_f64(secs)))
        } else {
            String::new()
        };
        let width = 24;
        let filled = ((frac * width as f64) as usize).min(width);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
        let line = format!(
            "{} [{bar}] {done}/{} {} {} elapsed{eta}{}{}",
            self.label,
            self.total,
            self.unit,
            fmt_duration(elapsed),
            if extra.is_empty() { "" } else { "  " },
            extra
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if finished {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line plot of (x, y, label) points as a standalone SVG: the
/// interpolation curve (perplexity against parameters in millions). Points
/// are joined in the order given (student to teacher) and labelled; the
/// y axis is logarithmic when the values span more than a factor of 10.
pub fn plot_svg(title: &str, points: &[(f64, f64, String)]) -> String {
    let (w, h) = (640.0, 420.0);
    let (l, r, t, b) = (70.0, 30.0, 40.0, 50.0);
    let fin: Vec<&(f64, f64, String)> = points
        .iter()
        .filter(|p| p.0.is_finite() && p.1.is_finite() && p.1 > 0.0)
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &fin {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    if fin.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
    }
    let log_y = y1 / y0 > 10.0;
    let fy = |y: f64| if log_y { y.log10() } else { y };
    let inv = |v: f64| if log_y { 10f64.powf(v) } else { v };
    let pad = |a: f64, b: f64| {
        if (b - a).abs() < 1e-12 {
            (a - 1.0, b + 1.0)
        } else {
            (a - 0.06 * (b - a), b + 0.06 * (b - a))
        }
    };
    let (x0, x1) = pad(x0, x1);
    let (v0, v1) = pad(fy(y0), fy(y1));
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| h - b - (fy(y) - v0) / (v1 - v0) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n",
        w / 2.0,
        esc(title),
        h - b,
        w - r,
        h - b,
        h - b
    );
    let xprec = if x1 - x0 < 1.0 {
        3
    } else if x1 - x0 < 10.0 {
        2
    } else {
        1
    };
    for i in 0..=4 {
        let tx = x0 + (x1 - x0) * i as f64 / 4.0;
        let ty = inv(v0 + (v1 - v0) * i as f64 / 4.0);
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.xprec$}</text>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            sx(tx),
            h - b + 18.0,
            tx,
            l - 6.0,
            sy(ty) + 4.0,
            if ty >= 100.0 { format!("{ty:.0}") } else { format!("{ty:.2}") }
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">parameters (millions)</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">perplexity{}</text>\n",
        (l + w - r) / 2.0,
        h - 12.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        if log_y { " (log scale)" } else { "" }
    ));
    let path: Vec<String> = fin
        .iter()
        .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
        .collect();
    s.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" ")
    ));
    for p in &fin {
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1f77b4\"><title>{}: {:.4}</title></circle>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{}</text>\n",
            sx(p.0),
            sy(p.1),
            esc(&p.2),
            p.1,
            sx(p.0) + 6.0,
            sy(p.1) - 6.0,
            esc(&p.2)
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::plot_svg;

    #[test]
    fn curve_plot_uses_log_scale_for_wide_ranges() {
        let pts = vec![
            (85.0, 5636.0, "student".to_string()),
            (120.3, 2422.5, "first-2".to_string()),
            (134.5, 73.06, "teacher".to_string()),
        ];
        let svg = plot_svg("t", &pts);
        assert!(svg.contains("(log scale)"));
        assert_eq!(svg.matches("<circle").count(), 3);
        // Every tick label is a positive perplexity.
        assert!(!svg.contains(">-"), "{svg}");
        let narrow = plot_svg("t", &[(0.05, 525.0, "a".into()), (0.07, 515.0, "b".into())]);
        assert!(!narrow.contains("log scale"));
        assert!(
            narrow.contains(">0.050<") || narrow.contains(">0.049<"),
            "{narrow}"
        );
    }
}
