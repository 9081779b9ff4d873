//! Prompt cleaning as official Wan and diffusers do it before tokenising.
//!
//! Wan's `HuggingfaceTokenizer(clean="whitespace")` and diffusers'
//! `prompt_clean` run `ftfy.fix_text`, `html.unescape` twice, strip, and
//! collapse every whitespace run to one space. ComfyUI does none of this.
//! The cleaning changes token ids (an escaped `&quot;` is six tokens, `"` one
//! or two), so a pipeline that mirrors Wan cleans and one that mirrors
//! ComfyUI does not; the caller chooses.
//!
//! ftfy is Python-only. Its steps that can change ids are reproduced here:
//! curly quotes straightened (`uncurl_quotes`), fullwidth ASCII and the
//! ideographic space narrowed (`fix_character_width`; the tokenizer's NFKC
//! maps them the same way, so this only makes the cleaned text read like
//! ftfy's), line breaks unified and invisible control characters dropped.
//! Not reproduced: mojibake repair (`fix_encoding`, e.g. `cafÃ©` -> `café`),
//! terminal escape removal and NFC (the tokenizer's NFKC subsumes it).
//! `html.unescape` is reproduced for numeric references (with HTML5's
//! windows-1252 and invalid-code-point rules) and for the named entities
//! prompts actually contain (the Latin-1 set, which like Python's also works
//! without `;`, plus common punctuation, arrows and symbols); a name outside
//! that table stays as written, where Python knows all 2231.

/// `prompt_clean`: ftfy subset, `html.unescape` twice, strip, whitespace runs
/// to one space.
pub fn clean_prompt(text: &str) -> String {
    let text = fix_text_lite(text);
    let text = html_unescape(&html_unescape(&text));
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Python's `str.isspace` (what `\s` and `strip()` match): Unicode
/// White_Space plus the ASCII information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The id-relevant subset of `ftfy.fix_text` (see the module doc).
pub fn fix_text_lite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => out.push('\''),
            '\u{201c}'..='\u{201f}' => out.push('"'),
            '\u{ff01}'..='\u{ff5e}' => {
                out.push(char::from_u32(c as u32 - 0xff01 + 0x21).unwrap_or(c))
            }
            '\u{3000}' => out.push(' '),
            c if is_removed_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Characters ftfy's `remove_control_chars` deletes (tab, newline, form
/// feed and carriage return are kept).
fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

/// Python's `html.unescape` for numeric references and the entities of
/// [`NAMED`] (see the module doc).
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match char_ref(after) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The reference after an `&`: (replacement, bytes consumed), or `None` to
/// keep the `&` literally.
fn char_ref(s: &str) -> Option<(String, usize)> {
    if let Some(num) = s.strip_prefix('#') {
        let (hex, digits) = match num.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, num),
        };
        let n = digits
            .bytes()
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if n == 0 {
            return None;
        }
        let radix = if hex { 16 } else { 10 };
        // Saturate: anything past U+10FFFF is U+FFFD anyway.
        let value = u32::from_str_radix(&digits[..n.min(9)], radix).unwrap_or(u32::MAX);
        let value = if n > 9 { u32::MAX } else { value };
        let mut consumed = 1 + usize::from(hex) + n;
        if digits[n..].starts_with(';') {
            consumed += 1;
        }
        return Some((numeric_char(value), consumed));
    }
    // `[^\t\n\f <&#;]{1,32};?`
    let name_len: usize = s
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let name = &s[..name_len];
    if s[name_len..].starts_with(';') {
        if let Some(r) = lookup(name) {
            return Some((r.to_string(), name_len + 1));
        }
    } else if let Some(r) = lookup(name).filter(|_| is_legacy(name)) {
        return Some((r.to_string(), name_len));
    }
    // The longest legacy name (usable without `;`) that starts the text.
    let mut ends: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    ends.reverse();
    for end in ends {
        let prefix = &name[..end];
        if is_legacy(prefix) {
            if let Some(r) = lookup(prefix) {
                return Some((r.to_string(), end));
            }
        }
    }
    None
}

fn numeric_char(value: u32) -> String {
    const CP1252: [u32; 32] = [
        0x20ac, 0x81, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8d, 0x017d, 0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013,
        0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x9d, 0x017e, 0x0178,
    ];
    let c = match value {
        0 => '\u{fffd}',
        0x0d => '\r',
        0x80..=0x9f => char::from_u32(CP1252[(value - 0x80) as usize]).unwrap_or('\u{fffd}'),
        0xd800..=0xdfff => '\u{fffd}',
        v if v > 0x10ffff => '\u{fffd}',
        0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => return String::new(),
        v if v & 0xfffe == 0xfffe => return String::new(),
        v => char::from_u32(v).unwrap_or('\u{fffd}'),
    };
    c.to_string()
}

/// Names HTML5 also accepts without `;`: amp, lt, gt, quot and the Latin-1 set.
fn is_legacy(name: &str) -> bool {
    matches!(
        name,
        "amp" | "AMP" | "lt" | "LT" | "gt" | "GT" | "quot" | "QUOT"
    ) || LATIN1.contains(&name)
}

fn lookup(name: &str) -> Option<String> {
    match name {
        "AMP" => return Some("&".into()),
        "LT" => return Some("<".into()),
        "GT" => return Some(">".into()),
        "QUOT" => return Some("\"".into()),
        _ => {}
    }
    if let Some(i) = LATIN1.iter().position(|n| *n == name) {
        return char::from_u32(0xa0 + i as u32).map(String::from);
    }
    NAMED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c.to_string())
}

/// Entity names of U+00A0..U+00FF, in code point order.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// Other common entities (need the `;`).
const NAMED: &[(&str, char)] = &[
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("hellip", '\u{2026}'),
    ("mdash", '\u{2014}'),
    ("ndash", '\u{2013}'),
    ("lsquo", '\u{2018}'),
    ("rsquo", '\u{2019}'),
    ("sbquo", '\u{201a}'),
    ("ldquo", '\u{201c}'),
    ("rdquo", '\u{201d}'),
    ("bdquo", '\u{201e}'),
    ("lsaquo", '\u{2039}'),
    ("rsaquo", '\u{203a}'),
    ("bull", '\u{2022}'),
    ("prime", '\u{2032}'),
    ("Prime", '\u{2033}'),
    ("dagger", '\u{2020}'),
    ("Dagger", '\u{2021}'),
    ("permil", '\u{2030}'),
    ("trade", '\u{2122}'),
    ("euro", '\u{20ac}'),
    ("minus", '\u{2212}'),
    ("le", '\u{2264}'),
    ("ge", '\u{2265}'),
    ("ne", '\u{2260}'),
    ("asymp", '\u{2248}'),
    ("infin", '\u{221e}'),
    ("larr", '\u{2190}'),
    ("uarr", '\u{2191}'),
    ("rarr", '\u{2192}'),
    ("darr", '\u{2193}'),
    ("harr", '\u{2194}'),
    ("hearts", '\u{2665}'),
    ("spades", '\u{2660}'),
    ("clubs", '\u{2663}'),
    ("diams", '\u{2666}'),
    ("star", '\u{2606}'),
    ("ensp", '\u{2002}'),
    ("emsp", '\u{2003}'),
    ("thinsp", '\u{2009}'),
    ("zwnj", '\u{200c}'),
    ("zwj", '\u{200d}'),
    ("lrm", '\u{200e}'),
    ("rlm", '\u{200f}'),
    ("OElig", '\u{152}'),
    ("oelig", '\u{153}'),
    ("Scaron", '\u{160}'),
    ("scaron", '\u{161}'),
    ("Yuml", '\u{178}'),
    ("fnof", '\u{192}'),
    ("circ", '\u{2c6}'),
    ("tilde", '\u{2dc}'),
    ("frasl", '\u{2044}'),
    ("oline", '\u{203e}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_like_python() {
        // Expected strings from CPython 3.11 `html.unescape`.
        let cases = [
            ("&quot;Robot&quot; &amp; co", "\"Robot\" & co"),
            ("&amp;quot;", "&quot;"),
            ("&ampfoo &amp", "&foo &"),
            ("&copy2024 &eacute;t&eacute;", "\u{a9}2024 été"),
            ("&#39;&#x27;&#X27", "'''"),
            ("&#150; &#0; &#1;x", "\u{2013} \u{fffd} x"),
            ("&#99999999999;", "\u{fffd}"),
            ("&nosuch; & &; &#;", "&nosuch; & &; &#;"),
            ("&hellip;&mdash;", "\u{2026}\u{2014}"),
        ];
        for (input, want) in cases {
            assert_eq!(html_unescape(input), want, "{input}");
        }
    }

    #[test]
    fn cleans_like_wan() {
        assert_eq!(
            clean_prompt("  leading\tand trailing\n whitespace   "),
            "leading and trailing whitespace"
        );
        assert_eq!(
            clean_prompt("&amp;quot;hi&amp;quot;\u{3000}\u{201c}x\u{201d}\u{ff01}"),
            "\"hi\" \"x\"!"
        );
        assert_eq!(clean_prompt(""), "");
        assert_eq!(clean_prompt(" \u{1f}\t"), "");
    }
}
