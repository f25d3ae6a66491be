//! Names from the host (file names, unit names, command output) shown to
//! people: control characters are escaped, so a file name cannot move the
//! cursor, recolour or clear the administrator's terminal.

use std::path::Path;

/// `text` with every control character (C0, DEL, C1) as a visible escape.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Display for host-provided names, escaped with [`clean`].
pub trait Shown {
    fn shown(&self) -> String;
}

impl Shown for Path {
    fn shown(&self) -> String {
        clean(&self.to_string_lossy())
    }
}

impl Shown for std::path::PathBuf {
    fn shown(&self) -> String {
        self.as_path().shown()
    }
}

impl Shown for str {
    fn shown(&self) -> String {
        clean(self)
    }
}

impl Shown for String {
    fn shown(&self) -> String {
        clean(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(clean("\u{9b}x"), "\\u{9b}x");
        assert_eq!(clean("ümlaut/ok"), "ümlaut/ok");
        assert_eq!(Path::new("/x\ty").shown(), "/x\\ty");
    }
}
