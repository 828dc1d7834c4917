//! The inventory: the operator's single description of the fleet (a TOML file).
//!
//! `raw` is the file's shape, `resolve` applies inheritance and validation,
//! `model` is the checked result, `roles` refuses a machine written twice,
//! `select` implements `--limit`.

mod blank;
mod checker;
mod error;
mod model;
mod raw;
mod resolve;
mod roles;
mod select;

use std::path::Path;

pub use error::{InventoryError, Problem};
pub use model::*;
pub use select::{select, SelectError};

use error::Positions;
use resolve::Checker;

impl Inventory {
    /// Reads, parses and validates an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let src = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let inventory = Self::parse(path, &src)?;
        // Whatever runs next may print text a secret can reach (hooks, DNS programs):
        // from now on the secrets this inventory makes known are masked everywhere.
        inventory.register_secrets();
        Ok(inventory)
    }

    /// Registers every secret this inventory makes known with `redact` (credentials
    /// in hook lines, TSIG secrets, credential-named environment variables).
    /// Unreadable key files are skipped: the DNS step reports them.
    fn register_secrets(&self) {
        for relay in &self.relays {
            let hooks = &relay.settings.hooks;
            for hook in [&hooks.pre_cutover, &hooks.post_cutover]
                .into_iter()
                .flatten()
            {
                for s in crate::infra::redact::secrets_in_command(hook) {
                    crate::infra::redact::register(&s);
                }
            }
            if let Some(file) = &relay.settings.dns.tsig_key_file {
                if let Ok(key) = crate::infra::dns::TsigKey::from_bind_file(file) {
                    crate::infra::redact::register(&key.secret_base64());
                }
            }
        }
        for (name, value) in &self.fleet.cmdeploy_env {
            if crate::infra::redact::is_secret_name(name) {
                crate::infra::redact::register(value);
            }
        }
        crate::infra::redact::register_environment();
    }

    /// Parses inventory text; `path` names it in errors and anchors relative paths.
    /// Every problem comes at once: wrong types, unknown keys, and what validation
    /// finds in the rest of the file.
    pub fn parse(path: &Path, src: &str) -> Result<Inventory, InventoryError> {
        let parsed = parse_raw(path, src);
        let mut problems = parsed.problems;
        if let Some(raw) = parsed.raw {
            let mut checker = Checker::new(path, src);
            let inventory = resolve::resolve(path, raw, &mut checker);
            // A key blanked for its wrong type is absent to validation: what it finds
            // missing there (in any layer, relays inherit) is the blanking's, e.g. the
            // rfc2136 provider "needs `tsig_key_file`" given as a number.
            let wrong: Vec<String> = problems
                .iter()
                .map(|p| blank::in_layer(&p.field).to_string())
                .collect();
            let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
            problems.extend(
                checker
                    .problems
                    .into_iter()
                    .filter(|p| !blank::blanked(blank::in_layer(&p.field), &wrong)),
            );
            if problems.is_empty() {
                if inventory.relays.is_empty() {
                    return Err(InventoryError::Empty {
                        path: path.display().to_string(),
                    });
                }
                return Ok(inventory);
            }
        }
        problems.sort_by_key(|p| (p.line, p.column));
        Err(InventoryError::Invalid { problems })
    }
}

/// Wrong types and unknown keys one load reports at most: each costs a parse.
const MAX_SHAPE_PROBLEMS: usize = 50;

/// What parsing the file's shape found: the raw inventory when the text could be
/// read past every wrong type, and the problems.
struct RawParse {
    raw: Option<raw::RawInventory>,
    problems: Vec<Problem>,
}

/// TOML syntax errors (the first one) and wrong types and unknown keys (every one),
/// with positions and key paths. serde stops at the first wrong type, so that key is
/// blanked with spaces in a copy of the text (every other byte offset, line and
/// column stays the same) and the copy parsed again, until it parses.
fn parse_raw(path: &Path, src: &str) -> RawParse {
    let file = path.display().to_string();
    let problem = |offset: Option<usize>, field: String, message: String| {
        let (line, column) = offset.map_or((1, 1), |o| Positions::new(src).line_col(o));
        Problem {
            file: file.clone(),
            line,
            column,
            field,
            message,
        }
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut text = src.to_string();
    loop {
        let de = match toml::de::Deserializer::parse(&text) {
            Ok(de) => de,
            Err(e) => {
                // In a copy with a key blanked the syntax error is the blanking's (an
                // element of a multi-line array, say): what was found stands.
                if problems.is_empty() {
                    problems.push(problem(
                        e.span().map(|s| s.start),
                        String::new(),
                        e.message().trim().to_string(),
                    ));
                }
                return RawParse {
                    raw: None,
                    problems,
                };
            }
        };
        let e = match serde_path_to_error::deserialize(de) {
            Ok(raw) => {
                return RawParse {
                    raw: Some(raw),
                    problems,
                }
            }
            Err(e) => e,
        };
        // Spanned<T> shows up as a private key in the path: hide it.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let field = if field == "." { String::new() } else { field };
        let inner = e.inner();
        let message = inner.message().trim().to_string();
        let span = inner.span();
        if let Some(missing) = blank::missing_field(&field, &message) {
            // Missing because it was blanked here: its wrong type is reported already.
            // Either way nothing can be blanked to read on.
            let found: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
            if !blank::blanked(&missing, &found) {
                problems.push(problem(span.map(|s| s.start), field, message));
            }
            return RawParse {
                raw: None,
                problems,
            };
        }
        problems.push(problem(span.as_ref().map(|s| s.start), field, message));
        match span.and_then(|s| blank::blank_key(&text, s)) {
            Some(blanked) if problems.len() < MAX_SHAPE_PROBLEMS => text = blanked,
            _ => {
                return RawParse {
                    raw: None,
                    problems,
                }
            }
        }
    }
}
