use super::*;

fn ild() -> PointSimulator {
    PointSimulator::new(Detector::load("ild").unwrap())
}

fn inc(particle: Particle, e: f64, theta_deg: f64, phi_deg: f64) -> Incident {
    let (t, p) = (theta_deg.to_radians(), phi_deg.to_radians());
    Incident {
        energy_gev: e,
        direction: [t.sin() * p.cos(), t.sin() * p.sin(), t.cos()],
        particle,
    }
}

/// Per-shower sums: visible energy (GeV), energy-weighted mean layer, mean x and y of layer
/// `l`, and the energy-weighted rms radius about the shower's own centre in layer `l`.
struct Moments {
    e: f64,
    depth: f64,
    n: usize,
}

fn moments(points: &[f32]) -> Moments {
    let (mut e, mut d) = (0.0, 0.0);
    for p in points.chunks(4) {
        e += p[3] as f64;
        d += p[3] as f64 * p[2] as f64;
    }
    Moments {
        e,
        depth: d / e.max(1e-30),
        n: points.len() / 4,
    }
}

fn run(sim: &PointSimulator, i: Incident, n: usize, seed: u64) -> Vec<Vec<f32>> {
    sim.simulate(&vec![i; n], seed, 0, &|_| {})
}

#[test]
fn builtin_detectors_load_and_bad_files_are_one_error() {
    let d = Detector::load("ild").unwrap();
    assert_eq!(d.n_layers(), 78);
    assert_eq!(d.section(29).name, "ecal-thick");
    assert_eq!(d.section(30).name, "hcal");
    let (x0, lam) = d.depth();
    // 20 × 0.599 + 10 × 1.199 + 0.5 + 48 × 1.138 X0; 0.844 + 0.05 + 5.712 λ_I.
    assert!((x0 - 79.094).abs() < 1e-9, "{x0}");
    assert!((lam - 6.606).abs() < 1e-9, "{lam}");
    let c = Detector::load("calochallenge").unwrap();
    assert_eq!(c.n_layers(), 45);
    assert!((c.layer_z_mm[1] - 5.1).abs() < 1e-12);

    let e = Detector::load("/nonexistent/det.toml").unwrap_err();
    assert!(
        e.contains("/nonexistent/det.toml") && e.contains("no such"),
        "{e}"
    );
    let text = include_str!("../../detectors/ild.toml");
    let e = Detector::from_toml(&text.replace("layers = 48", "layers = 47"), "x.toml").unwrap_err();
    assert!(e.contains("x.toml") && e.contains("77 layers"), "{e}");
    let e = Detector::from_toml(&text.replace("c_s = 0.22", "c_s = -1"), "x.toml").unwrap_err();
    assert!(e.contains("hcal") && e.contains("c_s"), "{e}");
    let e = Detector::from_toml(
        &text.replace("rm_mm = 24.6", "rm_mm = 24.6\ncolour = 1"),
        "x.toml",
    )
    .unwrap_err();
    assert!(e.contains("x.toml") && e.contains("colour"), "{e}");
}

#[test]
fn particles_parse_by_name_and_pdg() {
    for p in Particle::ALL {
        assert_eq!(p.name().parse::<Particle>().unwrap(), p);
        assert_eq!(p.pdg().to_string().parse::<Particle>().unwrap(), p);
    }
    assert!("kaon".parse::<Particle>().unwrap_err().contains("kaon"));
}

#[test]
fn points_are_cells_above_threshold_ordered_by_layer() {
    let sim = ild();
    for p in Particle::ALL {
        let s = run(&sim, inc(p, 20.0, 20.0, 45.0), 3, 5);
        for pts in &s {
            let mut last = (-1.0f32, f32::MIN, f32::MIN);
            for q in pts.chunks(4) {
                let l = q[2] as usize;
                assert_eq!(q[2], l as f32);
                let sec = sim.detector.section(l);
                assert!(q[3] as f64 * 1000.0 > sec.threshold_mev * 0.999, "{q:?}");
                assert!(
                    (q[2], q[0], q[1]) > last || q[2] > last.0,
                    "order {q:?} after {last:?}"
                );
                last = (q[2], q[0], q[1]);
            }
            // Points of one layer sit on one grid: their x differ by whole cells.
            let l0: Vec<&[f32]> = pts.chunks(4).filter(|q| q[2] == pts[2]).collect();
            let c = sim.detector.section(pts[2] as usize).cell_mm as f32;
            for q in &l0 {
                let k = (q[0] - l0[0][0]) / c;
                assert!((k - k.round()).abs() < 1e-3, "{k}");
            }
        }
    }
}

#[test]
fn same_seed_same_showers_whatever_the_threads() {
    let sim = ild();
    let incs = incidents(
        40,
        &Particle::ALL,
        [1.0, 100.0],
        [0.0, 30.0],
        [0.0, 360.0],
        9,
    );
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| sim.simulate(&incs, 3, 0, &|_| {}));
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
        .install(|| sim.simulate(&incs, 3, 0, &|_| {}));
    assert_eq!(one, two);
    // Shower k of a run starting at index 10 is shower 10 + k of the whole run.
    let tail = sim.simulate(&incs[10..], 3, 10, &|_| {});
    assert_eq!(tail, one[10..].to_vec());
    assert_ne!(sim.simulate(&incs, 4, 0, &|_| {}), one);
}

#[test]
fn incidents_follow_the_requested_ranges() {
    let v = incidents(
        2000,
        &[Particle::Photon, Particle::PionMinus],
        [2.0, 50.0],
        [10.0, 30.0],
        [90.0, 90.0],
        1,
    );
    let mut photons = 0;
    for i in &v {
        assert!((2.0..=50.0).contains(&i.energy_gev));
        let theta = i.direction[2].acos().to_degrees();
        assert!((10.0 - 1e-9..=30.0 + 1e-9).contains(&theta), "{theta}");
        assert!(i.direction[0].abs() < 1e-12 && i.direction[1] > 0.0);
        photons += (i.particle == Particle::Photon) as usize;
    }
    assert!((900..1100).contains(&photons), "{photons}");
}

#[test]
fn electrons_deposit_their_energy_times_the_sampling_fraction() {
    // Thresholds, cells and fluctuations aside, the visible energy of an electron is its energy
    // times the sampling fraction of the layers it deposits in: 3.2 % in the first 20 layers.
    let text = include_str!("../../detectors/ild.toml")
        .replace("sampling_fraction = 0.016", "sampling_fraction = 0.032")
        .replace("sampling_fraction = 0.023", "sampling_fraction = 0.032")
        .replace("threshold_mev = 0.1", "threshold_mev = 0.0")
        .replace("threshold_mev = 0.25", "threshold_mev = 0.0");
    let sim = PointSimulator::new(Detector::from_toml(&text, "t").unwrap());
    for e in [5.0, 50.0] {
        let s = run(&sim, inc(Particle::Electron, e, 0.0, 0.0), 200, 1);
        let mean = s.iter().map(|p| moments(p).e).sum::<f64>() / s.len() as f64;
        let want = 0.032 * e;
        assert!(
            (mean / want - 1.0).abs() < 0.01,
            "{e} GeV: {mean} vs {want}"
        );
    }
}

#[test]
fn tilted_showers_follow_their_axis() {
    let sim = ild();
    let (theta, phi) = (30.0f64, 60.0f64);
    let s = run(&sim, inc(Particle::Electron, 30.0, theta, phi), 100, 2);
    // Energy-weighted x and y of layer 10 over all showers lie on the axis.
    let l = 10;
    let (mut ex, mut ey, mut e) = (0.0, 0.0, 0.0);
    for pts in &s {
        for q in pts.chunks(4).filter(|q| q[2] as usize == l) {
            ex += (q[0] * q[3]) as f64;
            ey += (q[1] * q[3]) as f64;
            e += q[3] as f64;
        }
    }
    let depth = sim.detector.layer_z_mm[l] - sim.detector.calo_surface_mm;
    let t = theta.to_radians().tan() * depth;
    let (wx, wy) = (t * phi.to_radians().cos(), t * phi.to_radians().sin());
    assert!(
        (ex / e - wx).abs() < 1.0 && (ey / e - wy).abs() < 1.0,
        "({}, {}) vs ({wx}, {wy})",
        ex / e,
        ey / e
    );
    // The same energy reaches deeper layers later: the mean layer is earlier than at normal
    // incidence (more X0 per layer along the path).
    let straight = run(&sim, inc(Particle::Electron, 30.0, 0.0, 0.0), 100, 2);
    let d = |v: &[Vec<f32>]| v.iter().map(|p| moments(p).depth).sum::<f64>() / v.len() as f64;
    assert!(d(&s) < d(&straight) - 0.5, "{} vs {}", d(&s), d(&straight));
}

#[test]
fn photons_start_later_and_pions_go_deeper_and_wider_and_fluctuate_more() {
    let sim = ild();
    let n = 300;
    let stats = |p: Particle| {
        let s = run(&sim, inc(p, 40.0, 0.0, 0.0), n, 7);
        let m: Vec<Moments> = s.iter().map(|p| moments(p)).collect();
        let mean = |f: &dyn Fn(&Moments) -> f64| m.iter().map(f).sum::<f64>() / n as f64;
        let e = mean(&|m| m.e);
        let rel = (mean(&|m| (m.e - e).powi(2))).sqrt() / e;
        (mean(&|m| m.depth), rel, mean(&|m| m.n as f64))
    };
    let (de, re, _) = stats(Particle::Electron);
    let (dg, _, _) = stats(Particle::Photon);
    let (dp, rp, np) = stats(Particle::PionPlus);
    // 9/7 X0 later: about 2 thin ECAL layers of 0.6 X0.
    assert!(
        dg - de > 1.0 && dg - de < 3.5,
        "photon {dg} vs electron {de}"
    );
    assert!(dp > de + 10.0, "pion depth {dp} vs {de}");
    assert!(rp > 2.0 * re, "pion resolution {rp} vs {re}");
    assert!(np > 20.0, "{np} points");
}

#[test]
fn pions_interact_after_an_exponential_depth() {
    // The fraction of pions that cross the whole detector as a track is exp(-depth in λ_I).
    let sim = ild();
    let n = 4000;
    let s = run(&sim, inc(Particle::PionMinus, 10.0, 0.0, 0.0), n, 11);
    let (_, lam) = sim.detector.depth();
    // A track: one point in every layer it crosses.
    let tracks = s.iter().filter(|p| p.len() / 4 == 78).count() as f64 / n as f64;
    let want = (-lam).exp();
    assert!(
        (tracks - want).abs() < 3.0 * (want / n as f64).sqrt() + 2e-4,
        "{tracks} vs {want}"
    );
    // Half the pions interact within ln 2 λ_I: compare the first layer with more than one point.
    let early = s
        .iter()
        .filter(|p| {
            let mut count = [0usize; 78];
            for q in p.chunks(4) {
                count[q[2] as usize] += 1;
            }
            let first = count.iter().position(|&c| c > 1).unwrap_or(78);
            sim.detector
                .lambda
                .get(first)
                .is_some_and(|d| d[1] < std::f64::consts::LN_2)
        })
        .count() as f64
        / n as f64;
    assert!(early > 0.35 && early < 0.55, "{early}");
}

#[test]
#[ignore]
fn print_stats() {
    let sim = ild();
    for p in Particle::ALL {
        for e in [10.0, 100.0] {
            let s = run(&sim, inc(p, e, 0.0, 0.0), 200, 1);
            let m: Vec<Moments> = s.iter().map(|p| moments(p)).collect();
            let mean = |f: &dyn Fn(&Moments) -> f64| m.iter().map(f).sum::<f64>() / m.len() as f64;
            let mx = m.iter().map(|m| m.n).max().unwrap();
            println!(
                "{:6} {e:5} GeV: E_vis {:.4} GeV, depth {:.1}, points {:.0} (max {mx})",
                p.name(),
                mean(&|m| m.e),
                mean(&|m| m.depth),
                mean(&|m| m.n as f64)
            );
        }
    }
    let t = std::time::Instant::now();
    let incs = incidents(
        1000,
        &Particle::ALL,
        [1.0, 100.0],
        [0.0, 30.0],
        [0.0, 360.0],
        1,
    );
    let s = sim.simulate(&incs, 1, 0, &|_| {});
    println!(
        "1000 mixed showers in {:?}, {} points",
        t.elapsed(),
        s.iter().map(|p| p.len() / 4).sum::<usize>()
    );
}

#[test]
fn radial_profiles_are_cut_at_ten_radii() {
    // The quantile function inverts r²/(r² + 1) / (100/101) and never exceeds 10.
    for k in 0..=1000 {
        let u = k as f64 / 1000.0 * (1.0 - 1e-12);
        let r = super::cauchy_radius(u);
        assert!(r <= super::MAX_RADIUS + 1e-9, "{u}: {r}");
        let cdf = r * r / (r * r + 1.0) / (100.0 / 101.0);
        assert!((cdf - u).abs() < 1e-9, "{u}: cdf {cdf}");
    }
}

#[test]
fn showers_stay_within_their_cut_radial_profiles() {
    // Normal incidence: every point within 10 hadronic radii (at most 2 × 45 mm in the HCAL)
    // or 10 electromagnetic tail radii of the axis, plus a cell. Before the cut, one pion in a
    // hundred of this sample left points more than 3 m away.
    let sim = ild();
    for p in [Particle::PionPlus, Particle::Electron] {
        for s in run(&sim, inc(p, 40.0, 0.0, 0.0), 300, 11) {
            for q in s.chunks(4) {
                let r = (q[0] * q[0] + q[1] * q[1]).sqrt();
                assert!(r < 1500.0, "{p:?}: a point {r} mm from the axis");
            }
        }
    }
}
