//! The documentation cannot drift from the parser:
//! - every key the inventory parser accepts is in docs/inventory.md's tables, and every
//!   key in those tables is accepted (the parser's own list, from its "unknown field"
//!   error);
//! - the defaults written in the tables are the ones the parser applies;
//! - every ```toml block in the docs, README and examples' README parses with
//!   `Inventory::parse` (fragments are completed with a minimal [fleet] and relay).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cmfleet::model::inventory::Inventory;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const RELAY: &str = r#"
[[relay]]
mail_domain = "docs-test.example.org"
config = "relays/docs-test/chatmail.ini"
old = { ssh = "192.0.2.240", ip4 = "192.0.2.240" }
new = { ssh = "192.0.2.250", ip4 = "192.0.2.250" }
"#;

/// Writes `src` as `fleet.toml` in a fresh folder with every relative `config` it
/// names, and parses it.
fn parse_in_tempdir(src: &str) -> (tempfile::TempDir, Result<Inventory, String>) {
    let dir = tempfile::tempdir().unwrap();
    for line in src.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("config = \"") {
            let rel = &rest[..rest.find('"').unwrap()];
            if !rel.starts_with('/') {
                let p = dir.path().join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, "[params]\n").unwrap();
            }
        }
    }
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, src).unwrap();
    let parsed = Inventory::parse(&path, src).map_err(|e| e.to_string());
    (dir, parsed)
}

fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => {
                current = Some((i + 1, String::new()))
            }
            Some(_) if line.trim_start().starts_with("```") => blocks.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_toml_block_in_the_docs_parses() {
    let mut files = vec![
        "README.md".to_string(),
        "examples/inventories/README.md".into(),
    ];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(format!("docs/{}", p.file_name().unwrap().to_string_lossy()));
        }
    }
    let mut checked = 0;
    for file in &files {
        for (line, block) in toml_blocks(&read(file)) {
            let mut src = block.clone();
            if !src.lines().any(|l| l.trim() == "[fleet]") {
                src = format!("[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\n{src}");
            }
            if !src.contains("[[relay]]") {
                src.push_str(RELAY);
            }
            let (_dir, parsed) = parse_in_tempdir(&src);
            if let Err(e) = parsed {
                panic!("{file}:{line}: this toml block does not parse:\n{e}\n---\n{block}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} toml blocks found");
}

/// docs/inventory.md's tables: section id -> rows (key, type, default).
fn doc_tables() -> BTreeMap<String, Vec<(String, String, String)>> {
    let text = read("docs/inventory.md");
    let mut sections: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            section = line
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_default();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') || section.is_empty() {
            continue;
        }
        let key = cells[1].trim_matches('`').to_string();
        sections.entry(section.clone()).or_default().push((
            key,
            cells[2].to_string(),
            cells[3].to_string(),
        ));
    }
    sections
}

/// The keys the parser accepts where `probe` puts an unknown key, from its error.
fn accepted_keys(probe: &str) -> BTreeSet<String> {
    let (_dir, parsed) = parse_in_tempdir(probe);
    let err = parsed.expect_err("an unknown key must be refused");
    let (_, expected) = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of expected keys in: {err}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn base(fleet: &str, extra: &str, relay_line: &str, old_extra: &str) -> String {
    format!(
        "[fleet]\ncmdeploy = \"x\"\n{fleet}\n{extra}\n[groups.g]\n\n[[relay]]\nmail_domain = \"a.example.org\"\n\
         config = \"relays/a/chatmail.ini\"\n{relay_line}\nold = {{ ssh = \"192.0.2.1\", ip4 = \"192.0.2.1\"{old_extra} }}\n\
         new = {{ ssh = \"192.0.2.2\", ip4 = \"192.0.2.2\" }}\n"
    )
}

#[test]
fn inventory_doc_lists_exactly_the_keys_the_parser_accepts() {
    let tables = doc_tables();
    let doc = |s: &str| -> BTreeSet<String> {
        tables
            .get(s)
            .unwrap_or_else(|| panic!("docs/inventory.md has no table under a heading `{s}`"))
            .iter()
            .map(|r| r.0.clone())
            .collect()
    };
    let bogus = "zz_not_a_key = 1";
    let defaults = doc("[defaults]");
    let probes: [(&str, String, BTreeSet<String>); 8] = [
        ("[fleet]", base(bogus, "", "", ""), doc("[fleet]")),
        (
            "[defaults]",
            base("", &format!("[defaults]\n{bogus}"), "", ""),
            defaults.clone(),
        ),
        (
            "[defaults.dns]",
            base("", &format!("[defaults.dns]\n{bogus}"), "", ""),
            doc("[defaults.dns]"),
        ),
        (
            "[defaults.retry]",
            base("", &format!("[defaults.retry]\n{bogus}"), "", ""),
            doc("[defaults.retry]"),
        ),
        (
            "[defaults.hooks]",
            base("", &format!("[defaults.hooks]\n{bogus}"), "", ""),
            doc("[defaults.hooks]"),
        ),
        (
            "[groups.NAME]",
            base("", "", "", "").replace("[groups.g]\n", &format!("[groups.g]\n{bogus}\n")),
            doc("[groups.NAME]").union(&defaults).cloned().collect(),
        ),
        (
            "[[relay]]",
            base("", "", bogus, ""),
            doc("[[relay]]").union(&defaults).cloned().collect(),
        ),
        ("old", base("", "", "", ", zz_not_a_key = 1"), doc("old")),
    ];
    for (section, probe, documented) in probes {
        let accepted = accepted_keys(&probe);
        let undocumented: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "{section}: accepted by the parser but not in docs/inventory.md: {undocumented:?}; \
             in the docs but refused by the parser: {unknown:?}"
        );
    }
}

/// Every leaf of `v` by its last key: name -> values.
fn leaves(v: &serde_json::Value, name: &str, out: &mut BTreeMap<String, Vec<serde_json::Value>>) {
    match v {
        serde_json::Value::Object(m) if !(m.len() == 2 && m.contains_key("secs")) => {
            for (k, v) in m {
                leaves(v, k, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| leaves(v, name, out)),
        v => out.entry(name.to_string()).or_default().push(v.clone()),
    }
}

#[test]
fn inventory_doc_defaults_are_the_parsers() {
    let (_dir, inv) = parse_in_tempdir(&base("", "", "", ""));
    let inv = inv.unwrap();
    let json = serde_json::to_value(&inv).unwrap();
    let mut found = BTreeMap::new();
    leaves(&json, "", &mut found);
    let mut checked = 0;
    for (section, rows) in doc_tables() {
        for (key, ty, default) in rows {
            let expected: serde_json::Value = match ty.as_str() {
                "integer" => match default.parse::<u64>() {
                    Ok(n) => n.into(),
                    Err(_) => continue,
                },
                "duration" => {
                    let d = humantime::parse_duration(default.trim_matches(['`', '"'])).unwrap();
                    serde_json::json!({"secs": d.as_secs(), "nanos": d.subsec_nanos()})
                }
                "size" => {
                    let s = default.trim_matches(['`', '"']);
                    assert_eq!(s, "20GiB", "teach this test the size {s}");
                    (20u64 << 30).into()
                }
                "string" if default.starts_with("`\"") => default.trim_matches(['`', '"']).into(),
                _ => continue,
            };
            let values = found
                .get(alias(&key))
                .unwrap_or_else(|| panic!("{section} {key}: not in the parsed inventory"));
            assert!(
                values.contains(&expected),
                "{section} {key}: docs say the default is {default}, the parser gives {values:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} defaults checked");
}

#[test]
fn docs_link_to_files_that_exist() {
    for file in [
        "README.md",
        "docs/quickstart.md",
        "docs/inventory.md",
        "docs/runbook.md",
        "docs/how-it-works.md",
        "docs/report-schema.md",
    ] {
        let text = read(file);
        let dir: PathBuf = root().join(file).parent().unwrap().to_path_buf();
        for part in text.split("](").skip(1) {
            let target = &part[..part.find(')').unwrap_or(part.len())];
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            assert!(dir.join(path).exists(), "{file}: broken link {target}");
        }
    }
}

fn alias(k: &str) -> &str {
    match k {
        "ssh_user" => "user",
        "ssh_port" => "port",
        k => k,
    }
}
