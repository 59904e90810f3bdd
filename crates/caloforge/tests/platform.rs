//! The model platform from the command line: the registry (`caloforge models`, options a model
//! does not take), training parts of a model, model directories that are never replaced or left
//! unreadable, SIGKILL and SIGINT during training, and hostile output paths and inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_caloforge"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).arg("--quiet").output().expect("runs")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn failed_with(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {e}");
    assert!(e.contains(needle), "stderr lacks {needle:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

/// `caloforge train --preset icaloflow-tiny --data DATA --out OUT EXTRA...`
fn train_tiny(data: &str, out: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--preset",
        "icaloflow-tiny",
        "--data",
        data,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn p(&self, n: &str) -> String {
        self.0.path().join(n).to_str().unwrap().to_string()
    }
    fn path(&self, n: &str) -> PathBuf {
        self.0.path().join(n)
    }
    /// 40 dataset-2 showers.
    fn data(&self) -> String {
        let p = self.p("train.h5");
        if !Path::new(&p).exists() {
            ok(&run(&["simulate", "-n", "40", "--seed", "2", "--out", &p]));
        }
        p
    }
}

fn preset_file(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../caloforge-models/presets")
            .join(format!("{name}.toml")),
    )
    .unwrap()
}

fn read(p: &str, n: usize) -> Vec<f64> {
    caloforge_core::ShowerFile::open(Path::new(p), None)
        .unwrap()
        .read_rows(0, n)
        .unwrap()
}

#[test]
fn models_lists_every_model_and_preset_with_its_dataset() {
    let o = run(&["models"]);
    ok(&o);
    let t = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "icaloflow",
        "calodiffusion",
        "icaloflow-ds3-student",
        "calodiffusion-ds1-pions",
        "dataset 1-pions",
        "dataset 3",
        "--flows",
        "--sampler",
    ] {
        assert!(t.contains(needle), "{needle}: {t}");
    }
}

#[test]
fn options_parts_and_model_directories() {
    let d = Dir::new();
    let data = d.data();
    // An option the model does not take: one error naming option and model, nothing written.
    failed_with(
        &run(&[
            "train",
            "--preset",
            "calodiffusion-tiny",
            "--data",
            &data,
            "--out",
            &d.p("cd"),
            "--flows",
            "1",
        ]),
        "--flows is not an option of calodiffusion",
    );
    assert!(!d.path("cd").exists());
    // Training a subset of the flows succeeds and says what is missing.
    let o = train_tiny(&data, &d.p("run"), &["--flows", "3"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("flows 1, 2 are not trained yet"));
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--n",
            "2",
            "--out",
            &d.p("g.h5"),
        ]),
        "flow1 was not trained",
    );
    ok(&train_tiny(&data, &d.p("run"), &["--flows", "1,2"]));
    ok(&run(&[
        "generate",
        "--model",
        &d.p("run"),
        "--n",
        "3",
        "--out",
        &d.p("g.h5"),
    ]));
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--n",
            "2",
            "--out",
            &d.p("h.h5"),
            "--steps",
            "4",
        ]),
        "--steps is not an option of icaloflow",
    );
    // A trained model is not replaced without --force, nor one flow of it.
    let card = std::fs::read(d.path("run/model_card.json")).unwrap();
    failed_with(&train_tiny(&data, &d.p("run"), &[]), "--force replaces it");
    failed_with(
        &train_tiny(&data, &d.p("run"), &["--flows", "3"]),
        "flow3 is already trained",
    );
    assert_eq!(std::fs::read(d.path("run/model_card.json")).unwrap(), card);
    // --resume with another preset is refused.
    failed_with(
        &run(&[
            "train",
            "--preset",
            "icaloflow-small",
            "--data",
            &data,
            "--out",
            &d.p("run"),
            "--resume",
        ]),
        "another configuration",
    );
    // So is --resume with another --set than the run's, and --set of an unknown key names it
    // and writes nothing.
    failed_with(
        &train_tiny(
            &data,
            &d.p("run"),
            &["--resume", "--set", "flow1.hidden=12"],
        ),
        "another configuration",
    );
    failed_with(
        &train_tiny(&data, &d.p("typo"), &["--set", "flow1.hiden=4"]),
        "hiden",
    );
    assert!(!d.path("typo").exists());
    // --force replaces it; --set changes the configuration the run keeps.
    ok(&train_tiny(
        &data,
        &d.p("run"),
        &[
            "--force",
            "--seed",
            "9",
            "--set",
            "max_validation_samples=150",
        ],
    ));
    let saved = std::fs::read_to_string(d.path("run/config.toml")).unwrap();
    assert!(saved.contains("max_validation_samples = 150"), "{saved}");
    let summary = std::fs::read_to_string(d.path("run/train_summary.json")).unwrap();
    assert!(summary.contains("max_validation_samples=150"), "{summary}");
    // A config.toml that does not match the weights: one error naming the file.
    ok(&run(&[
        "train",
        "--preset",
        "calodiffusion-tiny",
        "--data",
        &data,
        "--out",
        &d.p("cd"),
    ]));
    let cp = d.path("cd/config.toml");
    let cfg = std::fs::read_to_string(&cp).unwrap();
    std::fs::write(
        &cp,
        cfg.replace("layer_sizes = [4, 4, 8]", "layer_sizes = [4, 8, 8]"),
    )
    .unwrap();
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("cd"),
            "--n",
            "2",
            "--out",
            &d.p("h.h5"),
        ]),
        "unet.safetensors",
    );
    failed_with(
        &run(&[
            "bench",
            "--model",
            &d.p("cd"),
            "--batch",
            "1",
            "--min-seconds",
            "0",
        ]),
        "unet.safetensors",
    );
    assert!(!d.path("h.h5").exists());
}

/// A training run long enough to be interrupted: icaloflow-tiny with many Flow-3 epochs.
fn long_preset(d: &Dir) -> String {
    let p = d.p("long.toml");
    let text = preset_file("icaloflow-tiny").replace(
        "batch_size = 64\nepochs = 1\n",
        "batch_size = 64\nepochs = 25\n",
    );
    assert!(text.contains("epochs = 25"));
    std::fs::write(&p, text).unwrap();
    p
}

fn start_training(d: &Dir, preset: &str, out: &str) -> std::process::Child {
    bin()
        .args([
            "train",
            "--preset",
            preset,
            "--data",
            &d.data(),
            "--out",
            out,
        ])
        .args(["--checkpoint-every", "0", "--quiet"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the Flow-3 checkpoint exists (the run is under way).
fn wait_for_checkpoint(out: &str, child: &mut std::process::Child) {
    let ck = Path::new(out).join("checkpoints/flow3.ckpt");
    let t0 = Instant::now();
    while !ck.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before its first checkpoint"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        child.try_wait().unwrap().is_none(),
        "training too short to interrupt"
    );
}

#[test]
fn sigkill_mid_training_resumes_to_the_uninterrupted_model_and_sigint_checkpoints() {
    let d = Dir::new();
    let preset = long_preset(&d);
    // Uninterrupted reference.
    ok(&run(&[
        "train",
        "--preset",
        &preset,
        "--data",
        &d.data(),
        "--out",
        &d.p("full"),
    ]));
    ok(&run(&[
        "generate",
        "--model",
        &d.p("full"),
        "--n",
        "4",
        "--out",
        &d.p("full.h5"),
    ]));
    // SIGKILL at some moment after the first checkpoint; the directory stays readable as a
    // model directory (a clear error, no panic), and --resume finishes the same model.
    let mut child = start_training(&d, &preset, &d.p("killed"));
    wait_for_checkpoint(&d.p("killed"), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let o = run(&[
        "generate",
        "--model",
        &d.p("killed"),
        "--n",
        "4",
        "--out",
        &d.p("k.h5"),
    ]);
    if !o.status.success() {
        failed_with(&o, "--resume");
    }
    ok(&run(&[
        "train",
        "--preset",
        &preset,
        "--data",
        &d.data(),
        "--out",
        &d.p("killed"),
        "--resume",
    ]));
    ok(&run(&[
        "generate",
        "--model",
        &d.p("killed"),
        "--n",
        "4",
        "--out",
        &d.p("resumed.h5"),
    ]));
    assert!(
        read(&d.p("resumed.h5"), 4) == read(&d.p("full.h5"), 4),
        "resumed model differs"
    );
    // No temporary files left behind.
    let tmp = std::fs::read_dir(d.path("killed/checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp")
        })
        .count();
    assert_eq!(tmp, 0, "stray temporary files");
    // SIGINT: stops after a step with a checkpoint and the best weights, exit status 130.
    let mut child = start_training(&d, &preset, &d.p("int"));
    wait_for_checkpoint(&d.p("int"), &mut child);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(d.path("int/checkpoints/flow3.ckpt").exists());
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("int/model_card.json")).unwrap())
            .unwrap();
    assert_eq!(card["flows"]["flow3"]["report"]["interrupted"], true);
    ok(&run(&[
        "train",
        "--preset",
        &preset,
        "--data",
        &d.data(),
        "--out",
        &d.p("int"),
        "--resume",
    ]));
    ok(&run(&[
        "generate",
        "--model",
        &d.p("int"),
        "--n",
        "4",
        "--out",
        &d.p("int.h5"),
    ]));
    assert!(
        read(&d.p("int.h5"), 4) == read(&d.p("full.h5"), 4),
        "resumed model differs"
    );
}

#[test]
fn hostile_outputs_and_inputs_are_refused() {
    let d = Dir::new();
    let data = d.data();
    ok(&train_tiny(&data, &d.p("run"), &[]));
    let before = std::fs::read(&data).unwrap();
    // Output = input.
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--energies-from",
            &data,
            "--out",
            &data,
        ]),
        "destroy the input",
    );
    failed_with(
        &run(&["features", "-d", "2", "-i", &data, "--out", &data]),
        "destroy the input",
    );
    failed_with(
        &run(&[
            "simulate",
            "-n",
            "3",
            "--energies-from",
            &data,
            "--out",
            &data,
        ]),
        "destroy the input",
    );
    assert_eq!(std::fs::read(&data).unwrap(), before);
    // A symbolic link, a FIFO and a directory at the output path are not replaced.
    let target = d.path("target.txt");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, d.path("link.h5")).unwrap();
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--n",
            "2",
            "--out",
            &d.p("link.h5"),
        ]),
        "symbolic link",
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(d.path("link.h5"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(Command::new("mkfifo")
        .arg(d.p("fifo.h5"))
        .status()
        .unwrap()
        .success());
    failed_with(
        &run(&["simulate", "-n", "2", "--out", &d.p("fifo.h5")]),
        "not a regular file",
    );
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--n",
            "2",
            "--out",
            &d.p("run"),
        ]),
        "a directory",
    );
    // The JSON summary never overwrites an unrelated file.
    std::fs::write(d.path("g.h5.json"), "my notes").unwrap();
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--n",
            "2",
            "--out",
            &d.p("g.h5"),
        ]),
        "not a caloforge summary",
    );
    assert_eq!(
        std::fs::read_to_string(d.path("g.h5.json")).unwrap(),
        "my notes"
    );
    assert!(!d.path("g.h5").exists());
    // Physical bounds and huge counts: one clear error, at once.
    failed_with(
        &run(&[
            "simulate",
            "--energy",
            "1e12",
            "-n",
            "2",
            "--out",
            &d.p("s.h5"),
        ]),
        "MeV",
    );
    failed_with(
        &run(&["simulate", "-n", "1000000000000", "--out", &d.p("s.h5")]),
        "split the work",
    );
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--n",
            "1000000000000",
            "--out",
            &d.p("s.h5"),
        ]),
        "split the work",
    );
    failed_with(
        &run(&[
            "generate",
            "--model",
            &d.p("run"),
            "--n",
            "2",
            "--energy-min",
            "1e-9",
            "--out",
            &d.p("s.h5"),
        ]),
        "MeV",
    );
    // No numeric option panics.
    for (args, needle) in [
        (
            vec![
                "generate",
                "--model",
                &*d.p("run"),
                "--n",
                "2",
                "--out",
                &*d.p("s.h5"),
                "--batch",
                "0",
            ],
            "--batch",
        ),
        (
            vec![
                "train",
                "--preset",
                "icaloflow-tiny",
                "--data",
                &*data,
                "--out",
                &*d.p("x"),
                "--max-minutes",
                "nan",
            ],
            "--max-minutes",
        ),
        (
            vec![
                "train",
                "--preset",
                "icaloflow-tiny",
                "--data",
                &*data,
                "--out",
                &*d.p("x"),
                "--checkpoint-every=-1",
            ],
            "--checkpoint-every",
        ),
        (
            vec![
                "train",
                "--preset",
                "icaloflow-tiny",
                "--data",
                &*data,
                "--out",
                &*d.p("x"),
                "--max-showers",
                "0",
            ],
            "--max-showers",
        ),
        (
            vec!["bench", "--preset", "icaloflow-tiny", "--batch", "0"],
            "batch sizes",
        ),
        (
            vec![
                "bench",
                "--preset",
                "icaloflow-tiny",
                "--min-seconds",
                "inf",
            ],
            "--min-seconds",
        ),
        (vec!["--threads", "0", "models"], "--threads"),
    ] {
        failed_with(&run(&args), needle);
    }
    assert!(!d.path("s.h5").exists() && !d.path("x").exists());
    // A bad preset key: one error naming the key.
    let bad = d.p("bad.toml");
    std::fs::write(
        &bad,
        format!("bogus_key = 1\n{}", preset_file("icaloflow-tiny")),
    )
    .unwrap();
    failed_with(
        &run(&[
            "train",
            "--preset",
            &bad,
            "--data",
            &data,
            "--out",
            &d.p("x"),
        ]),
        "bogus_key",
    );
    let nan_lr = d.p("nan.toml");
    std::fs::write(
        &nan_lr,
        preset_file("calodiffusion-tiny").replace("lr = 4e-4", "lr = nan"),
    )
    .unwrap();
    failed_with(
        &run(&[
            "train",
            "--preset",
            &nan_lr,
            "--data",
            &data,
            "--out",
            &d.p("x"),
        ]),
        "lr",
    );
    assert!(!d.path("x").exists());
    // Generation outside the trained energy range warns, and the summary counts unphysical
    // showers.
    let o = run(&[
        "generate",
        "--model",
        &d.p("run"),
        "--n",
        "3",
        "--energy-min",
        "2e6",
        "--energy-max",
        "3e6",
        "--out",
        &d.p("w.h5"),
    ]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("outside the range the model was trained on")
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("w.h5.json")).unwrap()).unwrap();
    assert_eq!(j["sanity"]["showers"], 3);
    assert!(!j["warnings"].as_array().unwrap().is_empty());
}
