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
