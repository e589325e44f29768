//! Pure text helpers that both sides of the program use: making text from the network
//! safe to print, making a file name sent by a peer safe to create, and sizes in words.
//! Nothing here touches the terminal or the disk.

/// Makes text from the network safe to show on a terminal.
///
/// - Control characters (C0, DEL, C1: every terminal escape sequence starts with one)
///   become U+FFFD, so that text cannot move the cursor, change colours, set the window
///   title or clear the screen. A tab stays.
/// - Invisible characters (see [`is_invisible`]: bidi controls such as U+202E, zero-width
///   characters, other format characters, line and paragraph separators) are shown as
///   their code, `<U+202E>`, so that text cannot reverse itself ("invoice\u{202E}fdp.exe"
///   shown as "invoiceexe.pdf") or hide characters. A zero-width joiner between two
///   characters beyond ASCII stays: it joins emoji sequences (and some scripts) and hides
///   nothing there. Names get the stricter [`sanitize_name`].
///
/// The JSON output (`--json`) carries text as it came (escaped by JSON): a program reading
/// it decides how to show it.
pub fn sanitize(text: &str) -> String {
    clean(text, true)
}

/// [`sanitize`] for names, display names and file names, where nothing invisible has a
/// place: a zero-width joiner is shown as `<U+200D>` too.
pub fn sanitize_name(text: &str) -> String {
    clean(text, false)
}

fn clean(text: &str, keep_joiners: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_control() && c != '\t' {
            out.push('\u{FFFD}');
        } else if is_invisible(c) {
            let joins = |x: Option<char>| x.is_some_and(|x| !x.is_ascii() && !is_invisible(x));
            if keep_joiners && c == ZERO_WIDTH_JOINER && joins(prev) && joins(chars.peek().copied())
            {
                out.push(c);
            } else {
                out.push_str(&format!("<U+{:04X}>", c as u32));
            }
        } else {
            out.push(c);
        }
        prev = Some(c);
    }
    out
}

const ZERO_WIDTH_JOINER: char = '\u{200D}';

/// Characters that change how the text around them is shown, or show nothing at all: the
/// Unicode format characters (general category Cf: bidi embeddings, overrides and
/// isolates, zero-width space and joiners, word joiner, invisible operators, the byte
/// order mark, interlinear annotation, tags), the line and paragraph separators, and the
/// fillers that render as blank (Hangul fillers, Mongolian vowel separator).
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// The longest file name kept, in bytes (most file systems allow 255; room is left for
/// ` (12)` and the temporary name's decorations).
pub const MAX_FILE_NAME: usize = 200;

/// Makes a file name sent by a peer safe to create in the downloads directory, or says
/// why it is refused.
///
/// Refused: an empty name, `.` and `..`, and anything with a path separator (`/`, `\`),
/// so that no name can reach outside the directory (`../x`, `/etc/passwd`, `a/b`,
/// `C:\x`). Cleaned: control characters, invisible characters ([`is_invisible`]: a bidi
/// override would make `invoice\u{202E}fdp.exe` read as "invoiceexe.pdf") and the
/// characters Windows forbids (`<>:"|?*`) become `_`; leading dots (hidden files, and our temporary names) and trailing dots
/// and spaces are removed; device names (`CON`, `NUL`, `COM1`...) get a leading `_`; a
/// name longer than [`MAX_FILE_NAME`] bytes is shortened, keeping its extension.
pub fn safe_file_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the file name is empty".into());
    }
    if name.contains(['/', '\\']) {
        return Err(format!(
            "the file name {:?} is a path; only a plain name is accepted",
            sanitize_name(name)
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_control()
                || is_invisible(c)
                || matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*')
            {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut cleaned = cleaned
        .trim_start_matches('.')
        .trim_end_matches(['.', ' '])
        .trim_start()
        .to_string();
    if cleaned.is_empty() {
        return Err(format!(
            "the file name {:?} has nothing left once cleaned",
            sanitize_name(name)
        ));
    }
    let stem = cleaned.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        cleaned.insert(0, '_');
    }
    if cleaned.len() > MAX_FILE_NAME {
        let (stem, ext) = split_extension(&cleaned);
        let ext = if ext.len() <= 16 { ext } else { "" };
        let mut cut = MAX_FILE_NAME - ext.len();
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        cleaned = format!("{}{ext}", &stem[..cut]);
    }
    Ok(cleaned)
}

/// `("report", ".pdf")`; `("archive.tar", ".gz")`; `("README", "")`.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

/// The `k`-th candidate for `name`: `name`, then `name (1).ext`, `name (2).ext`, ...
pub fn numbered(name: &str, k: u32) -> String {
    if k == 0 {
        return name.to_string();
    }
    let (stem, ext) = split_extension(name);
    format!("{stem} ({k}){ext}")
}

/// `12.5 MiB`
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "..\\x",
            "C:\\x",
            "...",
        ] {
            assert!(safe_file_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn odd_names_are_cleaned() {
        assert_eq!(safe_file_name("report.pdf").unwrap(), "report.pdf");
        assert_eq!(safe_file_name(".bashrc").unwrap(), "bashrc");
        assert_eq!(safe_file_name("a\u{1b}[2Jb").unwrap(), "a_[2Jb");
        assert_eq!(safe_file_name("x\ny").unwrap(), "x_y");
        assert_eq!(safe_file_name("what?.txt").unwrap(), "what_.txt");
        assert_eq!(safe_file_name("con.txt").unwrap(), "_con.txt");
        assert_eq!(safe_file_name("COM1").unwrap(), "_COM1");
        assert_eq!(safe_file_name("name. ").unwrap(), "name");
        let long = format!("{}.tar.gz", "é".repeat(300));
        let short = safe_file_name(&long).unwrap();
        assert!(
            short.len() <= MAX_FILE_NAME && short.ends_with(".gz"),
            "{short}"
        );
    }

    #[test]
    fn control_characters_become_the_replacement_character() {
        assert_eq!(
            sanitize("a\u{1b}[2Jb\u{7}\u{9b}c\td"),
            "a\u{FFFD}[2Jb\u{FFFD}\u{FFFD}c\td"
        );
        assert_eq!(sanitize("x\ny\r"), "x\u{FFFD}y\u{FFFD}");
    }

    #[test]
    fn bidi_controls_and_invisible_characters_are_shown_as_codes() {
        assert_eq!(sanitize("invoice\u{202E}fdp.exe"), "invoice<U+202E>fdp.exe");
        assert_eq!(sanitize("a\u{2066}b\u{2069}"), "a<U+2066>b<U+2069>");
        assert_eq!(sanitize("pay\u{200B}pal"), "pay<U+200B>pal");
        assert_eq!(sanitize("\u{FEFF}x\u{2028}y"), "<U+FEFF>x<U+2028>y");
        assert_eq!(sanitize("tag\u{E0041}"), "tag<U+E0041>");
        assert_eq!(sanitize("\u{3164}"), "<U+3164>");
        // What is not invisible stays as it is.
        assert_eq!(sanitize("héllo wörld 你好 ✓"), "héllo wörld 你好 ✓");
    }

    #[test]
    fn a_joiner_stays_inside_an_emoji_sequence_but_not_in_names() {
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        assert_eq!(sanitize(family), family);
        assert_eq!(sanitize("a\u{200D}b"), "a<U+200D>b");
        assert_eq!(sanitize("\u{1F468}\u{200D}"), "\u{1F468}<U+200D>");
        assert_eq!(
            sanitize_name(family),
            "\u{1F468}<U+200D>\u{1F469}<U+200D>\u{1F467}"
        );
    }

    #[test]
    fn invisible_characters_in_file_names_become_underscores() {
        assert_eq!(
            safe_file_name("invoice\u{202E}fdp.exe").unwrap(),
            "invoice_fdp.exe"
        );
        assert_eq!(safe_file_name("a\u{200B}b.txt").unwrap(), "a_b.txt");
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("a.txt", 0), "a.txt");
        assert_eq!(numbered("a.txt", 1), "a (1).txt");
        assert_eq!(numbered("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered("README", 3), "README (3)");
    }
}
