use super::*;
use crate::shower_rng;
use crate::{LikelihoodOptions, NoProgress};

fn tiny() -> CaloFlowConfig {
    CaloFlowConfig::from_toml(&crate::preset_text("caloflow-tiny").unwrap()).unwrap()
}

#[test]
fn presets_parse_with_the_reference_shapes() {
    for (name, d, c, hidden) in [
        ("caloflow-ds1-photons", 368, 6, 378),
        ("caloflow-ds1-pions", 533, 8, 533),
        ("caloflow-ds1-photons-student", 368, 6, 736),
        ("caloflow-ds1-pions-student", 533, 8, 500),
    ] {
        let cfg = CaloFlowConfig::from_toml(&crate::preset_text(name).unwrap()).unwrap();
        assert_eq!(cfg.dims(2), (d, c), "{name}");
        assert_eq!(cfg.flow2.hidden, hidden, "{name}");
    }
    let g =
        CaloFlowConfig::from_toml(&crate::preset_text("caloflow-ds1-photons").unwrap()).unwrap();
    assert_eq!(g.layer_sizes(), [8, 160, 190, 5, 5]);
    assert_eq!(g.dims(1), (5, 1));
    // Parameter counts of the reference's flows (docs/design/caloflow-ds1.md §2).
    let st1 = g.flow1.clone().unwrap();
    let f1 = Flow::new(
        g.flow_config(1, &st1, FlowKind::Maf, 1),
        &caloforge_nn::burn::tensor::Device::flex(),
    );
    assert_eq!(f1.num_params(), 97_842);
    let p = CaloFlowConfig::from_toml(&crate::preset_text("caloflow-ds1-pions").unwrap()).unwrap();
    assert_eq!(p.layer_sizes(), [8, 100, 100, 5, 150, 160, 10]);
    // A student with [flow1], or without [flow2.distill], is refused.
    let bad = crate::preset_text("caloflow-tiny-student")
        .unwrap()
        .replace("[flow2.distill]", "[flow2.nodistill]");
    assert!(CaloFlowConfig::from_toml(&bad).is_err());
}

#[test]
fn unit_space_matches_hand_computation_and_round_trips() {
    let cfg = tiny();
    let le = [1.0, 2.0, 3.0, 4.0, 5.0];
    let e_inc = 20.0;
    let mut x = Vec::new();
    cfg.unit_space(&le, e_inc, &mut x);
    let u: Vec<f64> = x.iter().map(|&v| cfg.unlogit(v)).collect();
    let want = [
        15.0 / (2.42 * 20.0),
        1.0 / 15.0,
        2.0 / 14.0,
        3.0 / 12.0,
        4.0 / 9.0,
    ];
    for (a, b) in u.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let mut back = Vec::new();
    cfg.from_unit_space(&x, e_inc, &mut back);
    for (a, b) in back.iter().zip(le) {
        assert!((a - b).abs() < 1e-4 * b, "{a} vs {b}");
    }
    // Shower context: log10(3 E / 1e5), log10(E_k / 1e5 + 1e-8) - 1.
    let mut c = Vec::new();
    cfg.push_shower_context(65536.0, &le, 1e-8, &mut c);
    assert!((c[0] as f64 - (3.0f64 * 0.65536).log10()).abs() < 1e-6);
    assert!((c[3] as f64 - ((3.0f64 / 1e5 + 1e-8).log10() - 1.0)).abs() < 1e-5);
}

/// log |det J| of a square row-major matrix by Gaussian elimination with partial pivoting.
fn log_abs_det(mut a: Vec<f64>, n: usize) -> f64 {
    let mut ld = 0.0;
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs()))
            .unwrap();
        for k in 0..n {
            a.swap(c * n + k, p * n + k);
        }
        let d = a[c * n + c];
        ld += d.abs().ln();
        for r in c + 1..n {
            let f = a[r * n + c] / d;
            for k in c..n {
                a[r * n + k] -= f * a[c * n + k];
            }
        }
    }
    ld
}

#[test]
fn unit_space_log_jacobian_matches_finite_differences() {
    let cfg = tiny();
    let e_inc = 4000.0;
    for le in [
        vec![10.0, 2000.0, 1500.0, 30.0, 5.0],
        vec![1.0, 300.0, 20.0, 0.5, 0.01],
    ] {
        let mut x = Vec::new();
        cfg.unit_space(&le, e_inc, &mut x);
        let n = le.len();
        let mut jac = vec![0.0f64; n * n];
        for k in 0..n {
            let h = 1e-3 * le[k];
            let (mut up, mut dn) = (le.clone(), le.clone());
            up[k] += h;
            dn[k] -= h;
            let (mut xu, mut xd) = (Vec::new(), Vec::new());
            cfg.unit_space(&up, e_inc, &mut xu);
            cfg.unit_space(&dn, e_inc, &mut xd);
            for i in 0..n {
                jac[i * n + k] = (xu[i] as f64 - xd[i] as f64) / (2.0 * h);
            }
        }
        let fd = log_abs_det(jac, n);
        let got = cfg.unit_space_log_jacobian(&le, e_inc, &x);
        assert!(
            (fd - got).abs() < 2e-3,
            "{le:?}: {got} vs finite differences {fd}"
        );
    }
}

#[test]
fn likelihood_is_deterministic_and_batch_independent() {
    let cfg = tiny();
    let m = CaloFlow::untrained(&cfg, 3).unwrap();
    let space = m.density_space().unwrap();
    assert_eq!(space.dims, 5 + 368);
    let e = [256.0, 65536.0, 1e6];
    let vox: Vec<f32> = (0..3 * 368)
        .map(|i| ((i * 37) % 11) as f32 * 10.0)
        .collect();
    let opts = LikelihoodOptions::default();
    let a = m
        .log_likelihood(&e, &vox, 2, 0, 1, &opts, &NoProgress)
        .unwrap();
    let b = m
        .log_likelihood(&e, &vox, 2, 0, 3, &opts, &NoProgress)
        .unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|v| v.is_finite()), "{a:?}");
    // Shower j draws its noise from stream first + j.
    let c = m
        .log_likelihood(&e[1..], &vox[368..], 2, 1, 2, &opts, &NoProgress)
        .unwrap();
    assert_eq!(c, a[1..]);
    let err = m
        .log_likelihood(&e, &vox[1..], 2, 0, 1, &opts, &NoProgress)
        .unwrap_err();
    assert!(err.to_string().contains("368 voxels"), "{err}");
}

#[test]
fn shower_rows_are_layer_normalised_logits() {
    let mut cfg = tiny();
    cfg.noise_level = 0.0;
    let sizes = cfg.layer_sizes();
    let nv = 368;
    let vox: Vec<f32> = (0..nv).map(|i| ((i * 37) % 11) as f32).collect();
    let e_inc = [1000.0];
    let idx = [0usize];
    let src = Source {
        cfg: &cfg,
        sizes: &sizes,
        e_inc: &e_inc,
        vox: &vox,
        idx: &idx,
        part: 2,
    };
    let (x, c) = src.batch(&[0], &mut shower_rng(1, 0));
    assert_eq!((x.len(), c.len()), (368, 6));
    let mut off = 0;
    for (k, &n) in sizes.iter().enumerate() {
        let frac: Vec<f64> = x[off..off + n].iter().map(|&v| cfg.unlogit(v)).collect();
        let e: f64 = vox[off..off + n].iter().map(|&v| v as f64).sum();
        assert!((frac.iter().sum::<f64>() - 1.0).abs() < 1e-4, "layer {k}");
        assert!((frac[1] - vox[off + 1] as f64 / e).abs() < 1e-5);
        let want = ((e / 1e5 + 1e-8).log10() - 1.0) as f32;
        assert!((c[1 + k] - want).abs() < 1e-5);
        off += n;
    }
}

#[test]
fn generated_showers_respect_layer_energies_cut_and_cap() {
    let cfg = tiny();
    let m = CaloFlow::untrained(&cfg, 3).unwrap();
    let e = [256.0, 65536.0, 4_194_304.0];
    let mut rngs: Vec<ChaCha8Rng> = (0..3).map(|j| shower_rng(5, j)).collect();
    let out = m.sample_batch(&e, &mut rngs);
    assert_eq!(out.len(), 3 * 368);
    assert!(out
        .iter()
        .all(|&v| v == 0.0 || (cfg.threshold as f32..=cfg.max_voxel as f32).contains(&v)));
    // Layer sums equal the energy flow's layer energies, up to the cut.
    let mut rngs: Vec<ChaCha8Rng> = (0..3).map(|j| shower_rng(5, j)).collect();
    let mut z = Vec::new();
    for r in rngs.iter_mut() {
        normals(r, 5, &mut z);
    }
    let ctx: Vec<f32> = e.iter().map(|&v| cfg.inc_feature(v)).collect();
    let (x1, _) = m.fast[0].sample_from_base(&z, &ctx);
    for s in 0..3 {
        let mut le = Vec::new();
        cfg.from_unit_space(&x1[s * 5..(s + 1) * 5], e[s], &mut le);
        let mut off = 0;
        for (k, &n) in m.sizes.iter().enumerate() {
            let layer = &out[s * 368 + off..s * 368 + off + n];
            let sum: f64 = layer.iter().map(|&v| v as f64).sum();
            let capped = layer.iter().any(|&v| v as f64 >= cfg.max_voxel);
            assert!(
                capped || (sum - le[k]).abs() <= n as f64 * cfg.threshold + 1e-4 * le[k],
                "shower {s} layer {k}: {sum} vs {}",
                le[k]
            );
            off += n;
        }
    }
}

#[test]
fn a_student_refuses_a_teacher_that_is_not_a_caloflow_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let student = crate::preset_text("caloflow-tiny-student").unwrap();
    let opts = |teacher: &Path| TrainOptions {
        data: dir.path().join("unused.h5"),
        out: dir.path().join("student"),
        teacher: Some(teacher.to_path_buf()),
        quiet: true,
        ..Default::default()
    };
    // Another model's directory: its config.toml is named.
    let other = dir.path().join("icaloflow");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("config.toml"),
        crate::preset_text("icaloflow-tiny").unwrap(),
    )
    .unwrap();
    let e = CaloFlow::train(&student, &opts(&other), &crate::NoProgress)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.toml") && e.contains("caloflow"), "{e}");
    // A CaloFlow student given as the teacher.
    let st = dir.path().join("student_as_teacher");
    std::fs::create_dir_all(&st).unwrap();
    std::fs::write(st.join("config.toml"), &student).unwrap();
    let mut card = CaloFlow::empty_card(&CaloFlowConfig::from_toml(&student).unwrap(), 1);
    card.role = Role::Student;
    std::fs::write(
        st.join("model_card.json"),
        serde_json::to_string(&card).unwrap(),
    )
    .unwrap();
    let e = CaloFlow::train(&student, &opts(&st), &crate::NoProgress)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("must be a dataset-1-photons CaloFlow teacher"),
        "{e}"
    );
    assert!(
        !dir.path().join("student").exists(),
        "no output for a refused teacher"
    );
}
