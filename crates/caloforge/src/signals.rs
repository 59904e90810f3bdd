//! Ctrl-C and SIGTERM: a training run stops after its current optimizer step and writes a
//! checkpoint (a second signal aborts at once); any other command removes the temporary files it
//! was writing and exits with status 130, leaving no partial output.

use std::sync::atomic::{AtomicBool, Ordering};

static TRAINING: AtomicBool = AtomicBool::new(false);

/// Starts the signal-handling thread.
pub fn install() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        let mut asked = false;
        for _ in signals.forever() {
            if TRAINING.load(Ordering::SeqCst) && !asked {
                asked = true;
                caloforge_models::request_stop();
                eprintln!(
                    "\nstopping after the current step and writing a checkpoint (signal again to abort)"
                );
            } else {
                caloforge_core::io::remove_temp_files();
                eprintln!("\ninterrupted");
                std::process::exit(130);
            }
        }
    });
}

/// Marks whether a training loop is running (a signal then stops it cleanly).
pub fn training(on: bool) {
    TRAINING.store(on, Ordering::SeqCst);
}
