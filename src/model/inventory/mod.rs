//! The inventory: the operator's single description of the fleet (a TOML file).
//!
//! `raw` is the file's shape, `resolve` applies inheritance and validation,
//! `model` is the checked result, `roles` refuses a machine written twice,
//! `select` implements `--limit`.

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
        crate::infra::redact::register_environment();
    }

    /// Parses inventory text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, src: &str) -> Result<Inventory, InventoryError> {
        let raw = parse_raw(path, src)?;
        let mut checker = Checker::new(path, src);
        let inventory = resolve::resolve(path, raw, &mut checker);
        if !checker.problems.is_empty() {
            let mut problems = checker.problems;
            problems.sort_by_key(|p| (p.line, p.column));
            return Err(InventoryError::Invalid { problems });
        }
        if inventory.relays.is_empty() {
            return Err(InventoryError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(inventory)
    }
}

/// TOML syntax and type errors: the first one, with its position and key path.
fn parse_raw(path: &Path, src: &str) -> Result<raw::RawInventory, InventoryError> {
    let file = path.display().to_string();
    let problem = |offset: Option<usize>, field: String, message: String| {
        let (line, column) = offset.map_or((1, 1), |o| Positions::new(src).line_col(o));
        InventoryError::Invalid {
            problems: vec![Problem {
                file: file.clone(),
                line,
                column,
                field,
                message,
            }],
        }
    };
    let de = toml::de::Deserializer::parse(src).map_err(|e| {
        problem(
            e.span().map(|s| s.start),
            String::new(),
            e.message().trim().to_string(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned<T> shows up as a private key in the path: hide it.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.inner();
        let field = if field == "." { String::new() } else { field };
        problem(
            inner.span().map(|s| s.start),
            field,
            inner.message().trim().to_string(),
        )
    })
}
