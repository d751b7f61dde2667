//! What the text targets share: errors about a text must point inside it.

use weir::config::ConfigErrors;

/// A refused text says why, and every error's line and column are inside `text`; the
/// errors also print.
pub fn assert_point_inside(text: &str, errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "a refused text says why");
    let lines = text.split('\n').collect::<Vec<_>>();
    for e in &errors.0 {
        if let Some((line, col)) = e.pos {
            assert!(line >= 1 && line <= lines.len(), "{e:?} is past the text");
            let width = lines[line - 1].chars().count();
            assert!(col >= 1 && col <= width + 1, "{e:?} is past its line");
        }
    }
    let _ = errors.to_string();
}
