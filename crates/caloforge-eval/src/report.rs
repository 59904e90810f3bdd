//! `report.html`: every table and plot of an evaluation in one self-contained file.

use crate::evaluate::EvalSummary;
use caloforge_core::numeric::py_float_repr;
use std::fmt::Write;
use std::path::Path;

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn img(dir: &Path, file: &str) -> String {
    match std::fs::read(dir.join(file)) {
        Ok(bytes) => format!("<figure><img src=\"data:image/png;base64,{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>", base64(&bytes), esc(file), esc(file)),
        Err(_) => String::new(),
    }
}

/// Renders the report of `s`; PNGs are read from `dir` and embedded.
pub fn html(s: &EvalSummary, dir: &Path) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>caloforge evaluation, dataset {ds}</title>\
         <style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}th{{background:#eef}}td:first-child{{text-align:left}}\
         figure{{display:inline-block;margin:4px;width:380px}}img{{width:100%}}figcaption{{font-size:11px;color:#555}}.warn{{color:#a30}}</style></head><body>\
         <h1>caloforge evaluation &mdash; dataset {ds}</h1><p>mode <code>{mode:?}</code>, seed {seed}, caloforge {ver}, {wall:.1} s</p>",
        ds = esc(&s.dataset),
        mode = s.mode,
        seed = s.seed,
        ver = s.caloforge_version,
        wall = s.wall_seconds
    );
    h.push_str("<h2>Inputs</h2><table><tr><th>sample</th><th>file</th><th>showers</th><th>mean E<sub>tot</sub>/E<sub>inc</sub></th><th>std</th><th>E<sub>inc</sub> range (MeV)</th><th>mean CoG layer</th><th>std CoG</th><th>non-zero voxels</th><th>ring fractions</th></tr>");
    for (name, f) in [("generated", &s.generated), ("reference", &s.reference)] {
        let rings: Vec<String> = f.ring_fractions.iter().map(|v| format!("{v:.3}")).collect();
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4e} &ndash; {:.4e}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}</td><td>{}</td></tr>",
            esc(&f.path), f.showers, f.mean_etot_einc, f.std_etot_einc, f.einc_range.0, f.einc_range.1,
            f.mean_cog_layer, f.std_cog_layer, f.mean_nonzero_voxels, rings.join(" ")
        );
    }
    h.push_str("</table>");
    for w in &s.warnings {
        let _ = write!(h, "<p class=\"warn\">warning: {}</p>", esc(w));
    }
    if !s.classifiers.is_empty() || s.fpd_x1e3.is_some() {
        h.push_str("<h2>Summary metrics</h2><table><tr><th>metric</th><th>value</th></tr>");
        for c in &s.classifiers {
            let _ = write!(
                h,
                "<tr><td>{} AUC ({} run(s), input dim {})</td><td>{:.4} &plusmn; {:.4}</td></tr><tr><td>{} JSD</td><td>{:.4} &plusmn; {:.4}</td></tr>",
                c.mode.name(), c.runs.len(), c.input_dim, c.auc_mean, c.auc_std, c.mode.name(), c.jsd_mean, c.jsd_std
            );
        }
        if let (Some(f), Some(k)) = (s.fpd_x1e3, s.kpd_x1e3) {
            let _ = write!(h, "<tr><td>FPD &times;10<sup>3</sup></td><td>{:.4} &plusmn; {:.4}</td></tr><tr><td>KPD &times;10<sup>3</sup></td><td>{:.4} &plusmn; {:.4}</td></tr>", f.value, f.error, k.value, k.error);
        }
        h.push_str("</table>");
    }
    if !s.histograms.is_empty() {
        h.push_str("<h2>Separation powers</h2><h3>Means per observable</h3><table><tr><th>observable</th><th>mean separation power</th></tr>");
        for (n, v) in &s.separation_means {
            let _ = write!(h, "<tr><td>{}</td><td>{:.5}</td></tr>", esc(n), v);
        }
        h.push_str("</table><h3>Every histogram</h3><table><tr><th>histogram</th><th>separation power</th><th>in evaluate.py default set</th></tr>");
        for r in &s.histograms {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.name),
                py_float_repr(r.separation_power),
                if r.extra { "extra" } else { "yes" }
            );
        }
        h.push_str("</table><h2>Histograms</h2>");
        for r in &s.histograms {
            if let Some(p) = &r.png {
                h.push_str(&img(dir, p));
            }
        }
    }
    if !s.average_pngs.is_empty() {
        h.push_str("<h2>Average showers per layer</h2>");
        for p in &s.average_pngs {
            h.push_str(&img(dir, p));
        }
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
