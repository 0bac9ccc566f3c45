//! A small self-contained SVG plot of training loss per step and the dev metric per epoch.

/// `loss`: (optimizer step, loss); `dev`: (optimizer step at the end of an epoch, metric value).
pub fn svg(title: &str, loss: &[(u64, f64)], dev: &[(u64, f64)], metric: &str) -> String {
    let (w, h, m) = (720.0, 360.0, 50.0);
    let max_step = loss.iter().map(|p| p.0).chain(dev.iter().map(|p| p.0)).max().unwrap_or(1).max(1) as f64;
    let max_loss = loss.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9);
    let x = |s: f64| m + s / max_step * (w - 2.0 * m);
    let yl = |v: f64| h - m - v / max_loss * (h - 2.0 * m);
    let ym = |v: f64| h - m - v.clamp(0.0, 1.0) * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{m}\" y=\"20\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{}\" y1=\"{m}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m, w - m, h - m, h - m, w - m, w - m, h - m
    );
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">optimizer step (0–{max_step})</text>\n", w / 2.0, h - 15.0);
    s += &format!("<text x=\"10\" y=\"{}\" fill=\"#1f77b4\">loss (0–{max_loss:.3})</text>\n", m - 8.0);
    s += &format!("<text x=\"{}\" y=\"{}\" fill=\"#d62728\" text-anchor=\"end\">dev {metric} (0–1)</text>\n", w - 10.0, m - 8.0);
    if !loss.is_empty() {
        let pts: Vec<String> = loss.iter().map(|&(st, v)| format!("{:.1},{:.1}", x(st as f64), yl(v))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n", pts.join(" "));
    }
    if !dev.is_empty() {
        let pts: Vec<String> = dev.iter().map(|&(st, v)| format!("{:.1},{:.1}", x(st as f64), ym(v))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"/>\n", pts.join(" "));
        for &(st, v) in dev {
            s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#d62728\"><title>{metric} {v:.4}</title></circle>\n", x(st as f64), ym(v));
        }
    }
    s += "</svg>\n";
    s
}
