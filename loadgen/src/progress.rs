//! The live progress bar (indicatif, on stderr) with a line of current figures.
//!
//! Hidden when disabled (tests, `--no-progress`) or when stderr is not a terminal, so the
//! simulation loop can call it unconditionally; updates are a few per second.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over the measured window, in milliseconds.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar drawn on stderr when `visible`, or a hidden one.
    pub fn new(visible: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(
            Some(1),
            if visible {
                ProgressDrawTarget::stderr_with_hz(4)
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        Progress { bar }
    }

    /// Shows a spinner-like message for a phase outside the measured window.
    pub fn phase(&self, message: &str) {
        self.bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bar.set_message(message.to_string());
        self.bar.tick();
    }

    /// Starts the measured window of `total_s` seconds.
    pub fn start(&self, total_s: f64) {
        self.bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos:>3}/{len}s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bar.set_length(total_s.ceil() as u64);
        self.bar.set_position(0);
    }

    /// Moves the bar to `t_s` seconds with the current figures.
    pub fn set(&self, t_s: f64, figures: String) {
        self.bar.set_position(t_s as u64);
        self.bar.set_message(figures);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
