//! The command-line tool: errors, exit codes, no partial outputs, determinism, round trips.

use std::path::Path;
use std::process::{Command, Output};

fn caloforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caloforge"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("runs")
}

fn err_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn failed_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "should fail");
    let e = err_text(o);
    assert!(e.contains(needle), "stderr lacks {needle:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

/// Simulates `n` dataset-2 training showers (seed 4) into `out`.
fn simulate_ds2(out: &str, n: usize) {
    let o = caloforge(&[
        "simulate",
        "-d",
        "2",
        "-n",
        &n.to_string(),
        "--seed",
        "4",
        "--out",
        out,
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn simulate_rejects_bad_arguments_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.h5");
    let o = out.to_str().unwrap();
    failed_with(
        &caloforge(&["simulate", "-n", "0", "--out", o]),
        "--n must be > 0",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--energy=-3", "--out", o]),
        "--energy must be a positive",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--energy-min=-1", "--out", o]),
        "--energy-min",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "-d", "1-pions", "--out", o]),
        "hadronic",
    );
    failed_with(
        &caloforge(&[
            "simulate",
            "-n",
            "5",
            "-d",
            "1-photons",
            "--both",
            "--out",
            o,
        ]),
        "--both",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--tune", "best", "--out", o]),
        "unknown tune",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--out", "/nonexistent-dir/x.h5"]),
        "/nonexistent-dir/x.h5",
    );
    failed_with(
        &caloforge(&[
            "simulate",
            "-n",
            "5",
            "--energies-from",
            "/nonexistent.h5",
            "--out",
            o,
        ]),
        "/nonexistent.h5: no such file",
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn simulate_is_deterministic_across_threads_and_energies_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let a = caloforge(&["simulate", "-n", "50", "--seed", "5", "--out", &p("a.h5")]);
    assert!(a.status.success(), "{}", err_text(&a));
    let b = caloforge(&[
        "--threads",
        "1",
        "simulate",
        "-n",
        "50",
        "--seed",
        "5",
        "--out",
        &p("b.h5"),
    ]);
    assert!(b.status.success(), "{}", err_text(&b));
    let fa = caloforge_core::ShowerFile::open(Path::new(&p("a.h5")), Some(6480)).unwrap();
    let fb = caloforge_core::ShowerFile::open(Path::new(&p("b.h5")), Some(6480)).unwrap();
    assert_eq!(fa.energies, fb.energies);
    assert_eq!(fa.read_rows(0, 50).unwrap(), fb.read_rows(0, 50).unwrap());
    assert!(fa.energies.iter().all(|&e| (1e3..=1e6).contains(&e)));
    // --energies-from reuses the energies in order; --both writes the same showers on both meshes.
    let c = caloforge(&[
        "simulate",
        "--energies-from",
        &p("a.h5"),
        "--both",
        "--seed",
        "9",
        "--out",
        &p("c.h5"),
    ]);
    assert!(c.status.success(), "{}", err_text(&c));
    let c2 = caloforge_core::ShowerFile::open(Path::new(&p("c_ds2.h5")), Some(6480)).unwrap();
    let c3 = caloforge_core::ShowerFile::open(Path::new(&p("c_ds3.h5")), Some(40500)).unwrap();
    assert_eq!(c2.energies, fa.energies);
    assert_eq!(c3.energies, fa.energies);
    // Same spots on both meshes: per-layer energies agree (both meshes span 41.85 mm), up to
    // the per-voxel threshold.
    let s2 = c2.read_rows(0, 1).unwrap();
    let s3 = c3.read_rows(0, 1).unwrap();
    let l2: f64 = s2[..144 * 10].iter().sum();
    let l3: f64 = s3[..900 * 10].iter().sum();
    assert!((l2 - l3).abs() / l2 < 0.02, "{l2} vs {l3}");
    // A JSON summary lies next to the output.
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("c.h5.json")).unwrap()).unwrap();
    assert_eq!(j["n"], 50);
    // Fixed energy.
    let d = caloforge(&[
        "simulate",
        "-n",
        "3",
        "--energy",
        "5000",
        "--out",
        &p("d.h5"),
    ]);
    assert!(d.status.success());
    assert_eq!(
        caloforge_core::ShowerFile::open(Path::new(&p("d.h5")), None)
            .unwrap()
            .energies,
        vec![5000.0; 3]
    );
    // Dataset-1 photons: 368 voxels, dataset 1's discrete energies; a range makes them
    // log-uniform instead.
    let g = caloforge(&[
        "simulate",
        "-d",
        "1-photons",
        "-n",
        "40",
        "--out",
        &p("g.h5"),
    ]);
    assert!(g.status.success(), "{}", err_text(&g));
    let fg = caloforge_core::ShowerFile::open(Path::new(&p("g.h5")), Some(368)).unwrap();
    assert!(fg
        .energies
        .iter()
        .all(|&e| (8..=22).any(|k| e == (1u64 << k) as f64)));
    assert!(fg.read_rows(0, 40).unwrap().iter().sum::<f64>() > 0.0);
    let h = caloforge(&[
        "simulate",
        "-d",
        "1-photons",
        "-n",
        "40",
        "--energy-min",
        "300",
        "--out",
        &p("h.h5"),
    ]);
    assert!(h.status.success(), "{}", err_text(&h));
    let fh = caloforge_core::ShowerFile::open(Path::new(&p("h.h5")), Some(368)).unwrap();
    assert!(fh
        .energies
        .iter()
        .all(|&e| (300.0..=4_194_304.0).contains(&e)));
    assert!(fh.energies.iter().any(|&e| e.fract() != 0.0));
}

#[test]
fn evaluate_and_features_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    assert!(caloforge(&["simulate", "-n", "20", "--out", &p("a.h5")])
        .status
        .success());
    failed_with(
        &caloforge(&["evaluate", "-d", "7", "-i", &p("a.h5"), "-r", &p("a.h5")]),
        "unknown dataset",
    );
    failed_with(
        &caloforge(&[
            "evaluate",
            "-d",
            "2",
            "-m",
            "best",
            "-i",
            &p("a.h5"),
            "-r",
            &p("a.h5"),
        ]),
        "unknown mode",
    );
    failed_with(
        &caloforge(&[
            "evaluate",
            "-d",
            "3",
            "-i",
            &p("a.h5"),
            "-r",
            &p("a.h5"),
            "--out",
            &p("ev"),
        ]),
        "6480 voxels per shower, the dataset needs 40500",
    );
    failed_with(
        &caloforge(&[
            "features",
            "-d",
            "2",
            "-i",
            &p("missing.h5"),
            "--out",
            &p("f.h5"),
        ]),
        "missing.h5: no such file",
    );
    assert!(!Path::new(&p("f.h5")).exists());
    // A working features call writes every feature with the documented shapes.
    let o = caloforge(&["features", "-d", "2", "-i", &p("a.h5"), "--out", &p("f.h5")]);
    assert!(o.status.success(), "{}", err_text(&o));
    let f = hdf5_pure::File::open(p("f.h5")).unwrap();
    assert_eq!(f.dataset("E_tot").unwrap().shape().unwrap(), vec![20]);
    for k in [
        "E_layer", "EC_x", "EC_y", "W_x", "W_y", "EC_r", "W_r", "sparsity",
    ] {
        assert_eq!(f.dataset(k).unwrap().shape().unwrap(), vec![20, 45], "{k}");
    }
    let o = caloforge(&[
        "evaluate",
        "-d",
        "2",
        "-m",
        "hist-chi",
        "-i",
        &p("a.h5"),
        "-r",
        &p("a.h5"),
        "--out",
        &p("ev"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let t = std::fs::read_to_string(p("ev/histogram_chi2_2.txt")).unwrap();
    assert!(t.contains("Etot / Einc: \n0.0\n\n"), "{t}");
}

/// The small preset shrunk to seconds of training.
fn tiny_preset(dir: &Path, student: bool) -> String {
    let name = if student {
        "icaloflow-small-student.toml"
    } else {
        "icaloflow-small.toml"
    };
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../caloforge-models/presets")
            .join(name),
    )
    .unwrap();
    let text = text
        .replace("hidden = 64", "hidden = 16")
        .replace("blocks = 4", "blocks = 2")
        .replace("epochs = 40", "epochs = 1")
        .replace("epochs = 20", "epochs = 1")
        .replace("epochs = 2\n", "epochs = 1\n");
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn train_generate_bench_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    simulate_ds2(&d("train.h5"), 120);
    let teacher = tiny_preset(dir.path(), false);
    let o = caloforge(&[
        "train",
        "--preset",
        &teacher,
        "--data",
        &d("train.h5"),
        "--out",
        &d("run"),
        "--seed",
        "2",
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    for f in [
        "config.toml",
        "model_card.json",
        "train_summary.json",
        "flow1.safetensors",
        "flow2.safetensors",
        "flow3.safetensors",
    ] {
        assert!(dir.path().join("run").join(f).exists(), "{f}");
    }
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/model_card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card["data_sha256"].as_str().unwrap().len(), 64);
    // --resume of Flow-3 on the same data continues its step count; the other flows stay.
    let steps3 = card["flows"]["flow3"]["report"]["steps"].as_u64().unwrap();
    let more = teacher.replace(".toml", "-more.toml");
    let more_text = std::fs::read_to_string(&teacher).unwrap().replace(
        "batch_size = 512\nepochs = 1",
        "batch_size = 512\nepochs = 2",
    );
    std::fs::write(&more, more_text).unwrap();
    let o = caloforge(&[
        "train",
        "--preset",
        &more,
        "--data",
        &d("train.h5"),
        "--out",
        &d("run"),
        "--flows",
        "3",
        "--resume",
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let card2: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/model_card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        card2["flows"]["flow3"]["report"]["steps"].as_u64().unwrap(),
        2 * steps3
    );
    assert_eq!(card2["flows"]["flow1"], card["flows"]["flow1"]);
    // Generation: same seed, different batch and threads -> identical file contents.
    let g = |out: &str, batch: &str, threads: &str| {
        let o = caloforge(&[
            "--threads",
            threads,
            "generate",
            "--model",
            &d("run"),
            "--energies-from",
            &d("train.h5"),
            "--out",
            out,
            "--batch",
            batch,
            "--seed",
            "5",
        ]);
        assert!(o.status.success(), "{}", err_text(&o));
    };
    g(&d("a.h5"), "7", "1");
    g(&d("b.h5"), "50", "2");
    let read = |p: &str| {
        caloforge_core::ShowerFile::open(Path::new(p), Some(6480))
            .unwrap()
            .read_rows(0, 120)
            .unwrap()
    };
    let (a, b) = (read(&d("a.h5")), read(&d("b.h5")));
    assert_eq!(a.len(), 120 * 6480);
    assert_eq!(a, b);
    assert!(dir.path().join("a.h5.json").exists());
    // The generated file is a valid evaluate input.
    let o = caloforge(&[
        "evaluate",
        "-d",
        "2",
        "-i",
        &d("a.h5"),
        "-r",
        &d("train.h5"),
        "-m",
        "hist-chi",
        "--out",
        &d("ev"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    // Student.
    let student = tiny_preset(dir.path(), true);
    let o = caloforge(&[
        "train",
        "--preset",
        &student,
        "--teacher",
        &d("run"),
        "--data",
        &d("train.h5"),
        "--out",
        &d("stud"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let o = caloforge(&[
        "bench",
        "--model",
        &d("stud"),
        "--batch",
        "1,4",
        "--min-seconds",
        "0",
        "--out",
        &d("bench.json"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let bench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(bench["rows"].as_array().unwrap().len(), 2);
    // The network's multiply-adds are counted, so a FLOP rate is reported.
    for r in bench["rows"].as_array().unwrap() {
        assert!(r["gflop_per_shower"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["gflops"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Training steps of every part of a preset, through the training loop.
    let o = caloforge(&[
        "bench",
        "--train",
        "--preset",
        &teacher,
        "--batch",
        "32",
        "--train-steps",
        "2",
        "--out",
        &d("train_bench.json"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let tb: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("train_bench.json")).unwrap(),
    )
    .unwrap();
    let parts: Vec<&str> = tb["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["batch"], 32);
            assert_eq!(r["steps"], 2);
            assert!(r["seconds_per_step"].as_f64().unwrap() > 0.0);
            r["part"].as_str().unwrap()
        })
        .collect();
    assert_eq!(parts, ["flow1", "flow2", "flow3"]);
    failed_with(
        &caloforge(&[
            "bench",
            "--train",
            "--preset",
            &teacher,
            "--train-steps",
            "1",
        ]),
        "--train-steps must be in 2..=10000",
    );

    // Errors: one message naming the problem, non-zero exit, nothing written.
    failed_with(
        &caloforge(&[
            "train",
            "--preset",
            "nope",
            "--data",
            &d("train.h5"),
            "--out",
            &d("x"),
        ]),
        "unknown preset",
    );
    failed_with(
        &caloforge(&[
            "train",
            "--preset",
            &student,
            "--data",
            &d("train.h5"),
            "--out",
            &d("x2"),
        ]),
        "--teacher",
    );
    failed_with(
        &caloforge(&[
            "train",
            "--preset",
            &teacher,
            "--data",
            &d("missing.h5"),
            "--out",
            &d("x3"),
        ]),
        "missing.h5",
    );
    failed_with(
        &caloforge(&[
            "generate",
            "--model",
            &d("nomodel"),
            "--n",
            "3",
            "--out",
            &d("c.h5"),
        ]),
        "nomodel",
    );
    failed_with(
        &caloforge(&[
            "generate",
            "--model",
            &d("run"),
            "--n",
            "0",
            "--out",
            &d("c.h5"),
        ]),
        "--n must be > 0",
    );
    failed_with(
        &caloforge(&["generate", "--model", &d("run"), "--out", &d("c.h5")]),
        "--energies-from",
    );
    assert!(!dir.path().join("c.h5").exists());
}

#[test]
fn calodiffusion_trains_and_generates_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    simulate_ds2(&d("train.h5"), 12);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../caloforge-models/presets/calodiffusion-small.toml"),
    )
    .unwrap()
    .replace("layer_sizes = [8, 8, 16]", "layer_sizes = [4, 4, 8]")
    .replace("groups = 4", "groups = 2")
    .replace("epochs = 5", "epochs = 1")
    .replace("batch_size = 32", "batch_size = 6")
    .replace("steps = 400", "steps = 10");
    std::fs::write(d("cd.toml"), text).unwrap();
    let o = caloforge(&[
        "train",
        "--preset",
        &d("cd.toml"),
        "--data",
        &d("train.h5"),
        "--out",
        &d("run"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let o = caloforge(&[
        "generate",
        "--model",
        &d("run"),
        "--n",
        "2",
        "--out",
        &d("g.h5"),
        "--sampler",
        "ddim",
        "--steps",
        "3",
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    assert!(dir.path().join("g.h5").exists());
    failed_with(
        &caloforge(&[
            "generate",
            "--model",
            &d("run"),
            "--n",
            "2",
            "--out",
            &d("h.h5"),
            "--sampler",
            "euler",
        ]),
        "unknown sampler",
    );
    assert!(!dir.path().join("h.h5").exists());
    // Too few DDPM steps for the skip, an unknown device, and (in a build without the `gpu`
    // feature, or on a machine without a Vulkan GPU) the GPU: one error, no output.
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            &*d("run"),
            "--n",
            "2",
            "--out",
            &*d("h.h5"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|s| s.to_string()));
        caloforge(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    failed_with(&gen(&["--sampler", "ddpm", "--steps", "2"]), "skipped");
    failed_with(&gen(&["--device", "tpu"]), "invalid value");
    let o = gen(&["--device", "gpu"]);
    if !o.status.success() {
        let e = err_text(&o);
        assert!(e.contains("GPU"), "{e}");
    }
    assert!(!dir.path().join("h.h5").exists() || o.status.success());
}

/// The demo's shipped model: it is written out, loads, samples finite non-negative showers close
/// to the simulator (E_tot/E_inc separation well below the 4-minute model's 0.56), and is a
/// normal run directory for `generate`. Bad demo arguments fail before anything is written.
#[test]
fn demo_samples_the_pretrained_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = caloforge(&[
        "demo",
        "--model",
        "scratch",
        "--train-minutes",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    failed_with(&o, "--train-minutes must be > 0");
    assert!(!out.exists(), "a refused demo wrote {}", out.display());

    let o = caloforge(&[
        "demo",
        "--n",
        "400",
        "--cls-epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "demo failed: {}", err_text(&o));
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("evaluation/metrics.json")).unwrap(),
    )
    .unwrap();
    let sep = m["separation_means"][0][1].as_f64().unwrap();
    assert_eq!(m["separation_means"][0][0], "Etot / Einc");
    assert!(sep < 0.15, "E_tot/E_inc separation power {sep}");
    let (g, r) = (
        m["generated"]["mean_etot_einc"].as_f64().unwrap(),
        m["reference"]["mean_etot_einc"].as_f64().unwrap(),
    );
    assert!(
        (g - r).abs() < 0.03,
        "mean E_tot/E_inc generated {g} vs reference {r}"
    );

    let model = out.join("icaloflow-pretrained");
    let gen = dir.path().join("g.h5");
    let o = caloforge(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "-n",
        "20",
        "--seed",
        "5",
        "--out",
        gen.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "generate failed: {}", err_text(&o));
    let f = caloforge_core::ShowerFile::open(&gen, Some(6480)).unwrap();
    let s = f.read_rows(0, 20).unwrap();
    assert_eq!(s.len(), 20 * 6480);
    assert!(s.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(s.iter().sum::<f64>() > 0.0);
}

/// SuperCalo from the command line: the tiny preset trains; `generate --coarse-from` upsamples a
/// fine-mesh file (coarse-grained on reading) and a coarse-mesh file, `--resample` draws several
/// fine showers per input shower, every coarse voxel keeps its energy (up to the noise and the
/// 15 keV cut), and bad inputs fail with one error and no output.
#[test]
fn supercalo_upsamples_coarse_showers_from_the_cli() {
    use caloforge_core::{CoarseGrid, DatasetKind, Grouping, ShowerFile};
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    simulate_ds2(&d("train.h5"), 12);
    let o = caloforge(&[
        "train",
        "--preset",
        "supercalo-tiny",
        "--data",
        &d("train.h5"),
        "--out",
        &d("run"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let grid = CoarseGrid::new(&DatasetKind::Ds2.geometry(None).unwrap(), Grouping::A).unwrap();
    let input = ShowerFile::open(Path::new(&d("train.h5")), Some(6480)).unwrap();
    let fine: Vec<f32> = input
        .read_rows(0, 12)
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mut coarse = vec![0.0f32; 12 * 648];
    for s in 0..12 {
        grid.coarse_grain(
            &fine[s * 6480..(s + 1) * 6480],
            &mut coarse[s * 648..(s + 1) * 648],
        );
    }
    caloforge_core::io::write_showers(Path::new(&d("coarse.h5")), &input.energies, &coarse, 648)
        .unwrap();
    for (src, out) in [("train.h5", "up.h5"), ("coarse.h5", "up2.h5")] {
        let o = caloforge(&[
            "generate",
            "--model",
            &d("run"),
            "--coarse-from",
            &d(src),
            "--resample",
            "2",
            "--batch",
            "5",
            "--out",
            &d(out),
        ]);
        assert!(o.status.success(), "{}", err_text(&o));
        let up = ShowerFile::open(Path::new(&d(out)), Some(6480)).unwrap();
        assert_eq!(up.len(), 24);
        let rows = up.read_rows(0, 24).unwrap();
        let mut c = vec![0.0f32; 648];
        for k in 0..24 {
            assert_eq!(up.energies[k], input.energies[k / 2]);
            let row: Vec<f32> = rows[k * 6480..(k + 1) * 6480]
                .iter()
                .map(|&v| v as f32)
                .collect();
            grid.coarse_grain(&row, &mut c);
            for (cv, (&a, &b)) in c
                .iter()
                .zip(&coarse[(k / 2) * 648..(k / 2 + 1) * 648])
                .enumerate()
            {
                let diff = a as f64 - b as f64;
                assert!(
                    diff < 5e-3 + 1e-3 && diff > -0.15 - 1e-3,
                    "{src} shower {k} voxel {cv}: {b} -> {a}"
                );
            }
        }
        // The two draws of one input shower differ (fresh noise per output shower).
        assert_ne!(rows[..6480], rows[6480..2 * 6480]);
    }
    // A file of neither width, and --resample without --coarse-from: one error, no output.
    caloforge_core::io::write_showers(Path::new(&d("bad.h5")), &[1e4], &[1.0; 100], 100).unwrap();
    failed_with(
        &caloforge(&[
            "generate",
            "--model",
            &d("run"),
            "--coarse-from",
            &d("bad.h5"),
            "--out",
            &d("x.h5"),
        ]),
        "showers of 100 voxels",
    );
    failed_with(
        &caloforge(&[
            "generate",
            "--model",
            &d("run"),
            "--n",
            "2",
            "--resample",
            "3",
            "--out",
            &d("x.h5"),
        ]),
        "--coarse-from",
    );
    assert!(!dir.path().join("x.h5").exists());
}

/// CaloScore from the command line: train the tiny preset, generate with the few-step Heun
/// sampler, and compute likelihoods; bad likelihood arguments and inputs fail with one error
/// and no output.
#[test]
fn caloscore_trains_generates_and_computes_likelihoods_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    simulate_ds2(&d("train.h5"), 12);
    let o = caloforge(&[
        "train",
        "--preset",
        "caloscore-tiny",
        "--data",
        &d("train.h5"),
        "--out",
        &d("run"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let o = caloforge(&[
        "generate",
        "--model",
        &d("run"),
        "--n",
        "2",
        "--out",
        &d("g.h5"),
        "--sampler",
        "heun",
        "--steps",
        "2",
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let run = d("run");
    let lik = |input: &str, out: &str, extra: &[&str]| {
        let mut a = vec![
            "likelihood",
            "--model",
            &*run,
            "--input",
            input,
            "--out",
            out,
            "--max-showers",
            "2",
            "--rtol",
            "1e-3",
            "--atol",
            "1e-3",
        ];
        a.extend_from_slice(extra);
        caloforge(&a)
    };
    let o = lik(&d("train.h5"), &d("l.h5"), &[]);
    assert!(o.status.success(), "{}", err_text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("l.h5.json")).unwrap()).unwrap();
    assert_eq!(summary["n"], 2);
    assert!(summary["mean_log_likelihood"].as_f64().unwrap().is_finite());
    assert_eq!(summary["trace"], "hutchinson");
    failed_with(&lik(&d("train.h5"), &d("m.h5"), &["--rtol", "0"]), "--rtol");
    // A dataset-1 file for a dataset-2 model.
    let o = caloforge(&[
        "simulate",
        "-d",
        "1-photons",
        "-n",
        "2",
        "--out",
        &d("p.h5"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    failed_with(&lik(&d("p.h5"), &d("m.h5"), &[]), "p.h5");
    assert!(!dir.path().join("m.h5").exists());
    assert!(!dir.path().join("m.h5.json").exists());
}

/// CaloScore v2 from the command line: train the tiny preset, distil it by 4 in two rounds
/// (`--teacher --factor`), generate with the student's 2 steps; `--factor` where it does not
/// apply fails with one error and no output.
#[test]
fn caloscore2_trains_distils_and_generates_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    simulate_ds2(&d("train.h5"), 12);
    let data = d("train.h5");
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--data", &*data];
        a.extend_from_slice(extra);
        caloforge(&a)
    };
    let o = train(&["--preset", "caloscore2-tiny", "--out", &d("base")]);
    assert!(o.status.success(), "{}", err_text(&o));
    let o = train(&[
        "--preset",
        "caloscore2-tiny-distill",
        "--teacher",
        &d("base"),
        "--factor",
        "4",
        "--out",
        &d("student"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let distilled: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("student/distilled.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            distilled["steps"].as_u64(),
            distilled["teacher_steps"].as_u64()
        ),
        (Some(2), Some(4))
    );
    let o = caloforge(&[
        "generate",
        "--model",
        &d("student"),
        "--n",
        "2",
        "--out",
        &d("g.h5"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    failed_with(
        &train(&[
            "--preset",
            "calodiffusion-tiny",
            "--factor",
            "2",
            "--out",
            &d("x"),
        ]),
        "--factor",
    );
    failed_with(
        &train(&[
            "--preset",
            "caloscore2-tiny",
            "--factor",
            "2",
            "--out",
            &d("x"),
        ]),
        "--factor",
    );
    assert!(!dir.path().join("x").exists());
}

/// Flow likelihoods from the command line, with the shipped pretrained iCaloFlow: exact (the
/// ODE's options are refused), over 45 × 145 dimensions, and every simulated shower is likelier
/// than the same shower with its layers in reverse order.
#[test]
fn flows_compute_exact_likelihoods_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    simulate_ds2(&d("s.h5"), 8);
    let f = caloforge_core::ShowerFile::open(std::path::Path::new(&d("s.h5")), Some(6480)).unwrap();
    let rows = f.read_rows(0, 8).unwrap();
    let reversed: Vec<f64> = rows
        .chunks(6480)
        .flat_map(|s| s.chunks(144).rev().flatten().copied().collect::<Vec<_>>())
        .collect();
    caloforge_core::io::write_showers(
        std::path::Path::new(&d("r.h5")),
        &f.energies,
        &reversed.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        6480,
    )
    .unwrap();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pretrained/icaloflow-small-100k"
    );
    let lik = |input: &str, out: &str, extra: &[&str]| {
        let mut a = vec![
            "likelihood",
            "--model",
            model,
            "--input",
            input,
            "--out",
            out,
            "--batch",
            "3",
        ];
        a.extend_from_slice(extra);
        caloforge(&a)
    };
    let read = |p: &str| {
        let h = hdf5_pure::File::open(p).unwrap();
        h.dataset("log_likelihood").unwrap().read_f64().unwrap()
    };
    for (input, out) in [("s.h5", "ls.h5"), ("r.h5", "lr.h5")] {
        let o = lik(&d(input), &d(out), &[]);
        assert!(o.status.success(), "{}", err_text(&o));
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("ls.h5.json")).unwrap()).unwrap();
    assert_eq!(summary["dimensions"], 45 * 145);
    assert_eq!(summary["method"], "exact (normalizing flows)");
    assert!(summary.get("trace").is_none());
    let (real, rev) = (read(&d("ls.h5")), read(&d("lr.h5")));
    assert_eq!(real.len(), 8);
    for (a, b) in real.iter().zip(&rev) {
        assert!(a > b, "shower {a} nats, reversed {b}");
    }
    failed_with(&lik(&d("s.h5"), &d("m.h5"), &["--exact-trace"]), "exactly");
    assert!(!dir.path().join("m.h5").exists());
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", err_text(o));
}

#[test]
fn point_clouds_simulate_convert_and_match_the_voxel_simulator() {
    use caloforge_core::showerdata::PointFile;
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    // Mixed particles and angles in the ILD-like detector.
    ok(&caloforge(&[
        "simulate",
        "--points",
        "-n",
        "60",
        "--particle",
        "e-,gamma,pi+",
        "--theta",
        "10,30",
        "--phi",
        "0,90",
        "--energy-min",
        "5000",
        "--energy-max",
        "50000",
        "--seed",
        "3",
        "-o",
        &p("ild.h5"),
    ]));
    let f = PointFile::open(Path::new(&p("ild.h5"))).unwrap();
    assert_eq!((f.len(), f.features), (60, 4));
    assert!(f.pdg.iter().all(|c| [11, 22, 211].contains(c)));
    for (d, e) in f.directions.iter().zip(&f.energies) {
        let theta = d[2].acos().to_degrees();
        assert!(
            (9.99..=30.01).contains(&theta) && d[0] >= -1e-6 && d[1] >= -1e-6,
            "{d:?}"
        );
        assert!((5.0..=50.0).contains(e), "{e} GeV");
    }
    let pts = f.read_points(0, 60).unwrap();
    assert!(pts.iter().all(|s| s
        .chunks(4)
        .all(|q| q[2] >= 0.0 && q[2] < 78.0 && q[3] > 0.0)));
    let summary = std::fs::read_to_string(p("ild.h5.json")).unwrap();
    assert!(
        summary.contains("\"ild\"") && summary.contains("\"pi+\""),
        "{summary}"
    );

    // The dataset-2/3 stack as points, binned into the dataset-2 mesh, gives the voxel
    // simulator's mean E_tot/E_inc.
    ok(&caloforge(&[
        "simulate",
        "--points",
        "--detector",
        "calochallenge",
        "-n",
        "150",
        "--seed",
        "5",
        "--energy-min",
        "1000",
        "--energy-max",
        "100000",
        "-o",
        &p("cc.h5"),
    ]));
    ok(&caloforge(&[
        "convert",
        &p("cc.h5"),
        "--voxelize",
        "2",
        "--threshold",
        "0.01515",
        "-o",
        &p("ccv.h5"),
    ]));
    // evaluate --points --voxelize: the point observables and, on the same showers binned into
    // the dataset-2 mesh, the CaloChallenge evaluation (a file against itself: separation 0).
    ok(&caloforge(&[
        "evaluate",
        "--points",
        "--detector",
        "calochallenge",
        "--voxelize",
        "2",
        "-m",
        "hist",
        "-i",
        &p("cc.h5"),
        "-r",
        &p("cc.h5"),
        "--out",
        &p("ev"),
    ]));
    assert!(Path::new(&p("ev/points_metrics.json")).exists());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("ev/calochallenge/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["generated"]["showers"], 150);
    let seps = m["separation_means"].as_array().unwrap();
    assert!(
        seps.len() >= 9 && seps.iter().all(|s| s[1].as_f64().unwrap() < 1e-12),
        "{seps:?}"
    );
    let (g, r) = (
        caloforge_core::ShowerFile::open(Path::new(&p("ev/voxels_generated.h5")), Some(6480))
            .unwrap(),
        caloforge_core::ShowerFile::open(Path::new(&p("ev/voxels_reference.h5")), Some(6480))
            .unwrap(),
    );
    assert_eq!(g.read_rows(0, 150).unwrap(), r.read_rows(0, 150).unwrap());
    simulate_ds2(&p("vox.h5"), 150);
    let ratio = |f: &str| {
        let s = caloforge_core::ShowerFile::open(Path::new(f), Some(6480)).unwrap();
        let rows = s.read_rows(0, s.len()).unwrap();
        rows.chunks(6480)
            .zip(&s.energies)
            .map(|(r, e)| r.iter().sum::<f64>() / e)
            .sum::<f64>()
            / s.len() as f64
    };
    let (a, b) = (ratio(&p("ccv.h5")), ratio(&p("vox.h5")));
    assert!((a - b).abs() < 0.01, "points {a} vs voxels {b}");

    // Voxels to points and back.
    ok(&caloforge(&[
        "convert",
        &p("vox.h5"),
        "--points",
        "2",
        "-o",
        &p("vp.h5"),
    ]));
    ok(&caloforge(&[
        "convert",
        &p("vp.h5"),
        "--voxelize",
        "2",
        "-o",
        &p("vpv.h5"),
    ]));
    let (x, y) = (
        caloforge_core::ShowerFile::open(Path::new(&p("vox.h5")), None).unwrap(),
        caloforge_core::ShowerFile::open(Path::new(&p("vpv.h5")), None).unwrap(),
    );
    let (rx, ry) = (x.read_rows(0, 150).unwrap(), y.read_rows(0, 150).unwrap());
    assert!(rx
        .iter()
        .zip(&ry)
        .all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs()));
    // ShowerData keeps incident energies in float32 GeV.
    assert!(x
        .energies
        .iter()
        .zip(&y.energies)
        .all(|(a, b)| (a - b).abs() <= 1e-7 * a));
    // A regular grid.
    ok(&caloforge(&[
        "convert",
        &p("ild.h5"),
        "--grid",
        "40,40,5,78",
        "-o",
        &p("grid.h5"),
    ]));
    let g = caloforge_core::ShowerFile::open(Path::new(&p("grid.h5")), Some(40 * 40 * 78)).unwrap();
    assert_eq!(g.len(), 60);
}

#[test]
fn point_clouds_reject_bad_arguments_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.h5");
    let o = out.to_str().unwrap();
    let sim = |extra: &[&str]| {
        let mut a = vec!["simulate", "--points", "-n", "5", "-o", o];
        a.extend_from_slice(extra);
        caloforge(&a)
    };
    failed_with(&sim(&["--particle", "e-,kaon"]), "unknown particle 'kaon'");
    failed_with(&sim(&["--theta", "85"]), "polar angles must lie in [0, 80]");
    failed_with(&sim(&["--phi", "30,10"]), "MIN <= MAX");
    failed_with(
        &sim(&["--detector", "nope.toml"]),
        "nope.toml: no such detector file",
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\ncalo_surface_mm = 0\n").unwrap();
    failed_with(&sim(&["--detector", bad.to_str().unwrap()]), "bad.toml");
    failed_with(&sim(&["--tune", "stock"]), "not to --points");
    // Converting a voxel file as points, or points with a bad grid.
    let vox = dir.path().join("v.h5");
    simulate_ds2(vox.to_str().unwrap(), 3);
    failed_with(
        &caloforge(&["convert", vox.to_str().unwrap(), "--voxelize", "2", "-o", o]),
        "not a ShowerData point-cloud file",
    );
    failed_with(
        &caloforge(&[
            "convert",
            vox.to_str().unwrap(),
            "--grid",
            "4,4,0,3",
            "-o",
            o,
        ]),
        "NX,NY,CELL_MM,LAYERS",
    );
    failed_with(
        &caloforge(&["convert", vox.to_str().unwrap(), "--points", "3", "-o", o]),
        "v.h5",
    );
    assert!(!out.exists());
    assert_eq!(files_in(dir.path()), vec!["bad.toml", "v.h5", "v.h5.json"]);
}

#[test]
fn point_cloud_models_train_generate_and_refuse_bad_requests() {
    use caloforge_core::showerdata::PointFile;
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    ok(&caloforge(&[
        "simulate",
        "--points",
        "-n",
        "40",
        "--particle",
        "e-,gamma,pi+",
        "--theta",
        "0,20",
        "--energy-min",
        "5000",
        "--energy-max",
        "50000",
        "-o",
        &p("train.h5"),
    ]));
    ok(&caloforge(&[
        "train",
        "--preset",
        "allshowers-tiny",
        "--data",
        &p("train.h5"),
        "--out",
        &p("m"),
    ]));
    // ShowerData out: the requested particles, angles and energies; points in the model's
    // layers with positive energies.
    let m = p("m");
    let gen_batch = |batch: &str, out: &str| {
        ok(&caloforge(&[
            "generate",
            "--model",
            &m,
            "-n",
            "6",
            "--particle",
            "gamma,pi+",
            "--theta",
            "5,10",
            "--energy-min",
            "10000",
            "--energy-max",
            "20000",
            "--batch",
            batch,
            "--out",
            out,
        ]))
    };
    gen_batch("4", &p("g.h5"));
    let f = PointFile::open(Path::new(&p("g.h5"))).unwrap();
    assert_eq!(f.len(), 6);
    assert!(f.pdg.iter().all(|c| [22, 211].contains(c)));
    assert!(f.energies.iter().all(|e| (10.0..=20.0).contains(e)));
    let pts = f.read_points(0, 6).unwrap();
    assert!(pts.iter().flatten().all(|v| v.is_finite()));
    assert!(pts.iter().all(|s| s
        .chunks(4)
        .all(|q| q[2] >= 0.0 && q[2] < 78.0 && q[3] > 0.0)));
    // The same showers whatever the batch size; --energies-from a point file reuses its
    // particles, directions and energies.
    gen_batch("1", &p("g1.h5"));
    assert_eq!(
        PointFile::open(Path::new(&p("g1.h5")))
            .unwrap()
            .read_points(0, 6)
            .unwrap(),
        pts
    );
    ok(&caloforge(&[
        "generate",
        "--model",
        &p("m"),
        "--energies-from",
        &p("train.h5"),
        "--out",
        &p("g2.h5"),
    ]));
    let g2 = PointFile::open(Path::new(&p("g2.h5"))).unwrap();
    let t = PointFile::open(Path::new(&p("train.h5"))).unwrap();
    assert_eq!(
        (g2.pdg.clone(), g2.energies.clone()),
        (t.pdg.clone(), t.energies.clone())
    );
    // Voxels of dataset 2.
    ok(&caloforge(&[
        "generate",
        "--model",
        &p("m"),
        "-n",
        "3",
        "--voxelize",
        "2",
        "--out",
        &p("v.h5"),
    ]));
    assert_eq!(
        caloforge_core::ShowerFile::open(Path::new(&p("v.h5")), Some(6480))
            .unwrap()
            .len(),
        3
    );
    // A training file with points many decades below the median energy (cells without a
    // readout threshold) is trained on, with a warning that --quiet does not hide.
    {
        use caloforge_core::showerdata::{PointShower, PointWriter};
        let mut rows = t.read_points(0, t.len()).unwrap();
        for s in &mut rows {
            for q in s.chunks_mut(4).step_by(40) {
                q[3] = 1e-12;
            }
        }
        let mut w = PointWriter::create(Path::new(&p("tail.h5")), 4, rows.len()).unwrap();
        let showers: Vec<PointShower> = rows
            .iter()
            .enumerate()
            .map(|(i, q)| PointShower {
                energy: t.energies[i],
                direction: t.directions[i],
                pdg: t.pdg[i],
                id: i as i64,
                points: q,
            })
            .collect();
        w.append(&showers).unwrap();
        w.finish().unwrap();
    }
    let o = caloforge(&[
        "train",
        "--preset",
        "allshowers-tiny",
        "--data",
        &p("tail.h5"),
        "--out",
        &p("m_tail"),
        "--flows",
        "1",
        "--max-minutes",
        "0.01",
    ]);
    ok(&o);
    let e = err_text(&o);
    assert!(
        e.contains("warning:") && e.contains("tail.h5") && e.contains("min_point_energy"),
        "{e}"
    );
    // Refusals, with no output.
    let bad = p("bad.h5");
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            m.as_str(),
            "-n",
            "2",
            "--out",
            bad.as_str(),
        ];
        a.extend_from_slice(extra);
        caloforge(&a)
    };
    failed_with(
        &gen(&["--particle", "130"]),
        "PDG code 130 is not one of this model's particles",
    );
    failed_with(&gen(&["--sampler", "rk4"]), "unknown solver 'rk4'");
    failed_with(&gen(&["--steps", "0"]), "--steps must be > 0");
    failed_with(&gen(&["--theta", "95"]), "polar angles");
    assert!(!Path::new(&bad).exists());
    let models = String::from_utf8_lossy(&caloforge(&["models"]).stdout).into_owned();
    assert!(
        models.contains("allshowers-tiny") && models.contains("points (78 layers)"),
        "{models}"
    );
}
