//! Progress bars with ETA (hidden when not wanted, e.g. in tests).

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps labelled `msg`, drawn to stderr, or a hidden one.
pub fn bar(show: bool, len: u64, msg: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>22} [{bar:40.cyan/blue}] {pos}/{len} ({per_sec}, {elapsed} elapsed, ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}
