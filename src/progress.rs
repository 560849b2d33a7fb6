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
