//! Exact optimal-transport matching of two equal-size point sets (uniform weights): the
//! assignment of minimal total cost, found by the Hungarian algorithm with potentials
//! (Jonker–Volgenant's shortest augmenting paths, O(n³)). With equal weights the optimal plan
//! of the earth mover's distance is a permutation, so this is what POT's `ot.emd` returns
//! (AllShowers' `OT_match.py`), without its iteration limit.

/// The assignment minimising Σ_i cost(i, perm[i]) for the `n × n` row-major `cost`:
/// row i is matched to column `perm[i]`.
pub fn assignment(cost: &[f64], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n, "cost is not {n} × {n}");
    if n == 0 {
        return Vec::new();
    }
    // 1-based potentials u (rows) and v (columns); p[j] = row matched to column j (0: none).
    let inf = f64::INFINITY;
    let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; n + 1]);
    let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    let mut minv = vec![inf; n + 1];
    let mut used = vec![false; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        minv.iter_mut().for_each(|m| *m = inf);
        used.iter_mut().for_each(|b| *b = false);
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let (mut delta, mut j1) = (inf, 0);
            let row = &cost[(i0 - 1) * n..i0 * n];
            for j in 1..=n {
                if used[j] {
                    continue;
                }
                let cur = row[j - 1] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        // Augment along the path.
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut perm = vec![0; n];
    for j in 1..=n {
        perm[p[j] - 1] = j - 1;
    }
    perm
}

/// The optimal matching of `points` to `noise` (both `n` rows of `d` values) under the
/// Euclidean (not squared) distance: point i gets noise row `perm[i]`.
pub fn match_euclidean(points: &[f32], noise: &[f32], d: usize) -> Vec<usize> {
    let n = points.len() / d.max(1);
    assert_eq!(noise.len(), n * d);
    let mut cost = vec![0.0f64; n * n];
    for i in 0..n {
        let a = &points[i * d..(i + 1) * d];
        for j in 0..n {
            let b = &noise[j * d..(j + 1) * d];
            let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            cost[i * n + j] = s.sqrt();
        }
    }
    assignment(&cost, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn total(cost: &[f64], n: usize, perm: &[usize]) -> f64 {
        (0..n).map(|i| cost[i * n + perm[i]]).sum()
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for k in 0..n {
                let mut q = p.clone();
                q.insert(k, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn assignment_is_optimal_against_brute_force() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for n in 1..=7 {
            for _ in 0..20 {
                let pts: Vec<f32> = (0..3 * n).map(|_| r.random::<f32>() * 4.0 - 2.0).collect();
                let noise: Vec<f32> = (0..3 * n).map(|_| r.random::<f32>() * 4.0 - 2.0).collect();
                let perm = match_euclidean(&pts, &noise, 3);
                let mut sorted = perm.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
                let mut cost = vec![0.0; n * n];
                for i in 0..n {
                    for j in 0..n {
                        cost[i * n + j] = (0..3)
                            .map(|c| ((pts[3 * i + c] - noise[3 * j + c]) as f64).powi(2))
                            .sum::<f64>()
                            .sqrt();
                    }
                }
                let best = permutations(n)
                    .iter()
                    .map(|p| total(&cost, n, p))
                    .fold(f64::INFINITY, f64::min);
                let got = total(&cost, n, &perm);
                assert!((got - best).abs() < 1e-9, "n {n}: {got} vs {best}");
            }
        }
    }

    #[test]
    fn assignment_is_optimal_at_the_size_of_a_showers_layer() {
        // An assignment is optimal iff no cyclic exchange of columns lowers the cost: no
        // negative cycle in the graph of rows where i → k costs c(i, π(k)) − c(k, π(k)) (row i
        // takes k's column). Bellman-Ford over all rows at once certifies it.
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for n in [40, 250] {
            let pts: Vec<f32> = (0..3 * n).map(|_| r.random::<f32>() * 4.0 - 2.0).collect();
            let noise: Vec<f32> = (0..3 * n).map(|_| r.random::<f32>() * 4.0 - 2.0).collect();
            let perm = match_euclidean(&pts, &noise, 3);
            let c = |i: usize, j: usize| {
                (0..3)
                    .map(|k| ((pts[3 * i + k] - noise[3 * j + k]) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            let improvable = |perm: &[usize]| {
                let mut dist = vec![0.0f64; n];
                for _ in 0..=n {
                    let mut relaxed = false;
                    for i in 0..n {
                        for k in 0..n {
                            let d = dist[i] + c(i, perm[k]) - c(k, perm[k]);
                            if d < dist[k] - 1e-9 {
                                dist[k] = d;
                                relaxed = true;
                            }
                        }
                    }
                    if !relaxed {
                        return false;
                    }
                }
                true
            };
            assert!(
                !improvable(&perm),
                "n {n}: a cyclic exchange lowers the cost"
            );
            // The check can fail: the optimal columns shifted by one row are not optimal.
            let shifted: Vec<usize> = (0..n).map(|i| perm[(i + 1) % n]).collect();
            assert!(improvable(&shifted));
        }
    }

    #[test]
    fn the_cost_is_euclidean_not_squared() {
        // Points (0, 0), (3, 0); noise (2, 0), (0.5, 0).
        let (a, b) = ([0.0f32, 0.0, 3.0, 0.0], [2.0f32, 0.0, 0.5, 0.0]);
        // Euclidean: diagonal |0−2| + |3−0.5| = 4.5, crossing |0−0.5| + |3−2| = 1.5.
        assert_eq!(match_euclidean(&a, &b, 2), vec![1, 0]);
        assert_eq!(assignment(&[4.0, 1.0, 2.0, 8.0], 2), vec![1, 0]);
        // A cost where squared and plain distances disagree: d = [[1, 2], [2, 2.9]] has the
        // diagonal 3.9 < 4 but squared 1 + 8.41 = 9.41 > 8.
        assert_eq!(assignment(&[1.0, 2.0, 2.0, 2.9], 2), vec![0, 1]);
        assert_eq!(assignment(&[1.0, 4.0, 4.0, 8.41], 2), vec![1, 0]);
    }
}
