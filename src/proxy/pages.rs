//! The pages people see from the gateway itself: small, self-contained HTML (inline CSS, no
//! external assets) in plain words. Everything a page echoes is escaped.

/// Escape text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete page: a heading, a paragraph of plain text and optional trusted HTML below it.
/// `title` and `message` are escaped; `extra_html` must already be safe.
pub fn page(title: &str, message: &str, extra_html: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Aspera Faspex</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}}
main{{max-width:34rem;margin:12vh auto;background:#fff;border-radius:8px;padding:2rem 2.25rem;box-shadow:0 1px 4px rgba(0,0,0,.12)}}
h1{{font-size:1.35rem;margin:0 0 1rem}} p{{line-height:1.5}} a{{color:#0b5cad}}
.btn{{display:inline-block;background:#0b5cad;color:#fff;text-decoration:none;padding:.5rem 1rem;border-radius:4px;border:0;font-size:1rem;cursor:pointer}}
input{{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box;margin:.25rem 0 .75rem}}
small{{color:#5a6272}}
</style></head>
<body><main><h1>{title}</h1><p>{message}</p>{extra_html}</main></body></html>
"#,
        title = escape(title),
        message = escape(message),
        extra_html = extra_html,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_it_echoes() {
        let p = page("<b>", "a \"quote\" & 'tick' <script>", "");
        assert!(p.contains("&lt;b&gt;"));
        assert!(p.contains("a &quot;quote&quot; &amp; &#39;tick&#39; &lt;script&gt;"));
        assert!(!p.contains("<script>"));
    }
}
