//! Progress bars for long commands: drawn on standard error when it is a terminal and the
//! output is not `--output json`; otherwise nothing at all is printed for progress.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;

use crate::progress::{Progress, Unit};

/// A bar per phase, or nothing.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Bar {
    /// A bar drawn only when `enabled` (see [`super::output::Output::shows_progress`]).
    pub fn new(enabled: bool) -> Bar {
        Bar {
            bar: Mutex::new(None),
            enabled,
        }
    }

    fn current(&self) -> Option<ProgressBar> {
        self.bar.lock().ok().and_then(|b| b.clone())
    }
}

impl Progress for Bar {
    fn begin(&self, what: &str, total: u64, unit: Unit) {
        if !self.enabled {
            return;
        }
        let template = match (unit, total) {
            (Unit::Bytes, 0) => "{msg} {bytes} ({binary_bytes_per_sec})",
            (Unit::Bytes, _) => {
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta})"
            }
            (Unit::Items, 0) => "{msg} {human_pos} ({per_sec})",
            (Unit::Items, _) => "{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, ETA {eta})",
        };
        let bar = ProgressBar::with_draw_target(
            (total > 0).then_some(total),
            ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(old) = slot.replace(bar) {
                old.finish();
            }
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.current() {
            bar.inc(n);
        }
    }

    fn end(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                bar.finish();
            }
        }
    }
}
