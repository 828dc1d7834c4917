//! Where the inventory's problems are collected, with their positions, while it
//! is checked: every problem is reported at once, not the first one alone.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{Positions, Problem};
use super::raw::Text;

/// Collects problems with their positions while the inventory is checked.
pub(crate) struct Checker<'a> {
    file: String,
    positions: Positions<'a>,
    /// Folder of the inventory: relative paths in it are resolved against this.
    base: PathBuf,
    pub problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &Path, src: &'a str) -> Self {
        Checker {
            file: file.display().to_string(),
            positions: Positions::new(src),
            base: base_dir(file),
            problems: Vec::new(),
        }
    }

    pub fn problem_at(&mut self, offset: usize, field: &str, message: impl Into<String>) {
        let (line, column) = self.positions.line_col(offset);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn problem<T>(&mut self, at: &Spanned<T>, field: &str, message: impl Into<String>) {
        self.problem_at(at.span().start, field, message);
    }

    /// Parses a spanned string with `parse`, recording a problem on failure.
    pub(crate) fn parse<T>(
        &mut self,
        text: &Text,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(text.get_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(text, field, e);
                None
            }
        }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }
}

/// The inventory's folder, absolute, because cmdeploy runs from a workspace, not
/// from here. `fleet.toml` has the parent `""`, which `absolute` refuses: that is
/// the current directory (a relative state_dir once broke `migrate -i fleet.toml`).
fn base_dir(file: &Path) -> PathBuf {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_dir_is_absolute_for_a_bare_file_name() {
        assert!(base_dir(Path::new("fleet.toml")).is_absolute());
        assert!(base_dir(Path::new("a/fleet.toml")).ends_with("a"));
        assert_eq!(base_dir(Path::new("/x/fleet.toml")), Path::new("/x"));
    }
}
