//! Progress on stderr, drawn by indicatif: a bar redrawn in place on a
//! terminal. indicatif draws nothing when stderr is not a terminal, so
//! there (logs, CI, pipes) a plain line is printed every few seconds and at
//! the end instead; nothing at all when asked to be quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);
const BAR_WIDTH: usize = 24;

enum Mode {
    /// indicatif redraws the bar in place (stderr is a terminal).
    Bar,
    /// One line per report, at most every `LINE_EVERY` (and the last one).
    Lines {
        last: Option<Instant>,
    },
    Quiet,
}

pub struct Progress {
    bar: ProgressBar,
    label: String,
    unit: &'static str,
    mode: Mode,
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

/// "12.0s elapsed ETA 1m05s": the ETA (indicatif's estimate from the recent
/// rate) only while something is done and something is left.
fn timing(elapsed: Duration, done: u64, total: u64, eta: Duration) -> String {
    let mut s = format!("{} elapsed", fmt_duration(elapsed));
    if done > 0 && done < total {
        s += &format!(" ETA {}", fmt_duration(eta));
    }
    s
}

fn with_sep(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!("  {extra}")
    }
}

impl Progress {
    pub fn new(label: &str, total: usize, unit: &'static str) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let (target, mode) = if tty {
            (ProgressDrawTarget::stderr(), Mode::Bar)
        } else {
            (ProgressDrawTarget::hidden(), Mode::Lines { last: None })
        };
        let style = ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:{BAR_WIDTH}}}] {{pos}}/{{len}} {{unit}} {{timing}}{{wide_msg}}"
        ))
        .expect("the progress template is valid")
        .progress_chars("##.")
        .with_key(
            "unit",
            move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(unit);
            },
        )
        .with_key(
            "timing",
            |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let total = s.len().unwrap_or(0);
                let _ = w.write_str(&timing(s.elapsed(), s.pos(), total, s.eta()));
            },
        );
        let bar = ProgressBar::with_draw_target(Some(total as u64), target)
            .with_style(style)
            .with_prefix(label.to_string());
        Progress {
            bar,
            label: label.to_string(),
            unit,
            mode,
        }
    }

    pub fn quiet(mut self, quiet: bool) -> Self {
        if quiet {
            self.bar.set_draw_target(ProgressDrawTarget::hidden());
            self.mode = Mode::Quiet;
        }
        self
    }

    /// Report `done` of `total`, with extra text (rates, losses) after it.
    pub fn update(&mut self, done: usize, extra: &str) {
        let done = done as u64;
        let total = self.bar.length().unwrap_or(0);
        let finished = done >= total;
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                self.bar.set_message(with_sep(extra));
                self.bar.set_position(done);
                if finished && !self.bar.is_finished() {
                    self.bar.finish();
                }
            }
            Mode::Lines { last } => {
                // The hidden bar still keeps the elapsed time and the rate.
                self.bar.set_position(done);
                let now = Instant::now();
                if !finished && last.is_some_and(|t| now - t < LINE_EVERY) {
                    return;
                }
                *last = Some(now);
                eprintln!("{}", self.line(done, total, extra));
            }
        }
    }

    /// A message on stderr that leaves the bar intact (printed above it).
    pub fn println(&self, msg: &str) {
        match self.mode {
            Mode::Bar if !self.bar.is_finished() => self.bar.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    /// The report as one plain line: what the bar shows, without redrawing.
    fn line(&self, done: u64, total: u64, extra: &str) -> String {
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let filled = ((frac * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
        format!(
            "{} [{}{}] {done}/{total} {} {}{}",
            self.label,
            "#".repeat(filled),
            ".".repeat(BAR_WIDTH - filled),
            self.unit,
            timing(self.bar.elapsed(), done, total, self.bar.eta()),
            with_sep(extra)
        )
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
