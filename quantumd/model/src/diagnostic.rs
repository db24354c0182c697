//! Diagnostics in the compiler convention `PATH:LINE:COL: error: FIELD: MESSAGE`.
//!
//! The format is a contract (tests outside the project parse it), so it is
//! produced in exactly one place: [`Located`]'s `Display`.

use std::fmt;
use std::ops::Range;

/// One problem in one manifest, located by byte span in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Dotted key the problem is about: `resources.memory-max`, `child[1].manifest`.
    pub field: String,
    pub message: String,
    /// Byte range in the manifest source; `None` points at the start of the file.
    pub span: Option<Range<usize>>,
}

impl Diagnostic {
    pub fn new(field: impl Into<String>, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Diagnostic {
            field: field.into(),
            message: message.into(),
            span,
        }
    }
}

/// Maps byte offsets to 1-based line and column (columns count characters).
#[derive(Debug, Clone)]
pub struct SourceMap {
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub fn new(src: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap { line_starts }
    }

    /// 1-based (line, column) of `offset` in `src`.
    pub fn line_col(&self, src: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(src.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        // A span may end inside a multi-byte character only if the parser
        // reported a bad span; count whole characters before it either way.
        let col = src
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or_else(|| src[start..].char_indices().take_while(|(i, _)| start + i < offset).count());
        (line + 1, col + 1)
    }
}

/// A diagnostic resolved to a file position, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub field: String,
    pub message: String,
}

impl Located {
    pub fn resolve(path: &str, src: &str, map: &SourceMap, d: &Diagnostic) -> Self {
        let (line, col) = match &d.span {
            Some(span) => map.line_col(src, span.start),
            None => (1, 1),
        };
        Located {
            path: path.to_owned(),
            line,
            col,
            field: d.field.clone(),
            message: d.message.clone(),
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}: {}",
            self.path, self.line, self.col, self.field, self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let src = "a = 1\nné = \"x\"\n";
        let map = SourceMap::new(src);
        assert_eq!(map.line_col(src, 0), (1, 1));
        assert_eq!(map.line_col(src, 6), (2, 1));
        let eq = src.find('=').map(|_| src.rfind('=').unwrap()).unwrap();
        assert_eq!(map.line_col(src, eq), (2, 4));
        assert_eq!(map.line_col(src, src.len()), (3, 1));
    }
}
