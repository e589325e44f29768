//! Pure text helpers that both sides of the program use: making text from the network
//! safe to print, and making a file name sent by a peer safe to create. Nothing here
//! touches the terminal or the disk.

/// Replaces control characters (terminal escape sequences included) so that text from a
/// peer cannot move the cursor, change colours or clear the screen.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// The longest file name kept, in bytes (most file systems allow 255; room is left for
/// ` (12)` and the temporary name's decorations).
pub const MAX_FILE_NAME: usize = 200;

/// Makes a file name sent by a peer safe to create in the downloads directory, or says
/// why it is refused.
///
/// Refused: an empty name, `.` and `..`, and anything with a path separator (`/`, `\`),
/// so that no name can reach outside the directory (`../x`, `/etc/passwd`, `a/b`,
/// `C:\x`). Cleaned: control characters and the characters Windows forbids (`<>:"|?*`)
/// become `_`; leading dots (hidden files, and our temporary names) and trailing dots
/// and spaces are removed; device names (`CON`, `NUL`, `COM1`...) get a leading `_`; a
/// name longer than [`MAX_FILE_NAME`] bytes is shortened, keeping its extension.
pub fn safe_file_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the file name is empty".into());
    }
    if name.contains(['/', '\\']) {
        return Err(format!(
            "the file name {:?} is a path; only a plain name is accepted",
            sanitize(name)
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*') {
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
            sanitize(name)
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
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("a.txt", 0), "a.txt");
        assert_eq!(numbered("a.txt", 1), "a (1).txt");
        assert_eq!(numbered("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered("README", 3), "README (3)");
    }
}
