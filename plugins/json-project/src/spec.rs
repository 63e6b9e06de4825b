//! Parsing the comma-separated field lists of the configuration.

use runnel_sdk::Error;

/// A field moved from one dotted path to another (`from == to` when not renamed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    /// Source path.
    pub from: String,
    /// Destination path.
    pub to: String,
}

/// Splits `a, b ,c` into trimmed non-empty items; an empty list is an error naming `setting`.
fn items<'a>(setting: &str, text: &'a str) -> Result<Vec<&'a str>, Error> {
    let items: Vec<&str> = text.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err(Error::new(format!("{setting} is empty")));
    }
    Ok(items)
}

/// Parses `src[:dst]` items; with `rename_optional` false every item needs a `:dst`.
pub fn parse_renames(setting: &str, text: &str, rename_optional: bool) -> Result<Vec<Rename>, Error> {
    items(setting, text)?
        .into_iter()
        .map(|item| {
            let (from, to) = match item.split_once(':') {
                Some((from, to)) => (from.trim(), to.trim()),
                None if rename_optional => (item, item),
                None => return Err(Error::new(format!("{setting}: {item:?} should be src:dst"))),
            };
            if from.is_empty() || to.is_empty() {
                return Err(Error::new(format!("{setting}: {item:?} has an empty path")));
            }
            Ok(Rename { from: from.to_string(), to: to.to_string() })
        })
        .collect()
}

/// Parses a list of dotted paths.
pub fn parse_paths(setting: &str, text: &str) -> Result<Vec<String>, Error> {
    Ok(items(setting, text)?.into_iter().map(str::to_string).collect())
}
