//! `{name}` placeholders in exec arguments and isolation paths.

/// A placeholder occurrence: its name and byte range (braces included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder<'a> {
    pub name: &'a str,
    pub start: usize,
    pub end: usize,
}

/// Every `{name}` in `s`, where name is `[a-z_][a-z0-9_-]*`. Braces that do
/// not enclose such a name are literal text, so shell snippets keep their
/// `{}`, `${HOME}` and `{a,b}`.
pub fn placeholders(s: &str) -> Vec<Placeholder<'_>> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            if let Some(len) = s[i + 1..].find('}') {
                let name = &s[i + 1..i + 1 + len];
                if is_param_name(name) {
                    out.push(Placeholder {
                        name,
                        start: i,
                        end: i + len + 2,
                    });
                    i += len + 2;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Names allowed for parameters: lower-case letter or `_` first, then
/// lower-case letters, digits, `_` or `-`.
pub fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_')) && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// Replaces every placeholder using `value`; returns the first name `value`
/// has no answer for.
pub fn substitute(s: &str, mut value: impl FnMut(&str) -> Option<String>) -> Result<String, &str> {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for p in placeholders(s) {
        out.push_str(&s[last..p.start]);
        out.push_str(&value(p.name).ok_or(p.name)?);
        last = p.end;
    }
    out.push_str(&s[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lower_case_names_only() {
        let names: Vec<_> = placeholders("--dir={dir} {port} {} ${HOME} {a b}").iter().map(|p| p.name).collect();
        assert_eq!(names, ["dir", "port"]);
    }

    #[test]
    fn substitutes_every_occurrence() {
        let r = substitute("{a}-{b}-{a}", |n| Some(n.to_uppercase()));
        assert_eq!(r.as_deref(), Ok("A-B-A"));
        assert_eq!(substitute("x{missing}", |_| None), Err("missing"));
    }
}
