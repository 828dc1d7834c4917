//! TSIG keys in BIND's `key` statement format, as `tsig-keygen` writes them.
//!
//! The secret never leaves this module in printable form: `Debug` and `Display`
//! redact it, and parse errors describe the problem by line number without echoing
//! any token (a malformed file could otherwise put the secret into a log).

use std::fmt;
use std::path::Path;

use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, TSigner};

use super::error::DnsError;

/// How far apart (seconds) our clock and the server's may be: BIND's default.
const FUDGE_SECS: u16 = 300;

/// The HMAC algorithms BIND generates keys for and hickory can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlg {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlg {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(TsigAlg::HmacSha256),
            "hmac-sha384" => Some(TsigAlg::HmacSha384),
            "hmac-sha512" => Some(TsigAlg::HmacSha512),
            _ => None,
        }
    }

    fn to_hickory(self) -> TsigAlgorithm {
        match self {
            TsigAlg::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlg::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlg::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TsigAlg::HmacSha256 => "hmac-sha256",
            TsigAlg::HmacSha384 => "hmac-sha384",
            TsigAlg::HmacSha512 => "hmac-sha512",
        })
    }
}

/// A TSIG key: name, algorithm and (redacted) secret.
#[derive(Clone)]
pub struct TsigKey {
    name: String,
    algorithm: TsigAlg,
    secret: Vec<u8>,
}

impl TsigKey {
    /// Read a BIND key file (`key "name" { algorithm hmac-sha256; secret "..."; };`).
    /// The file must hold exactly one key.
    pub fn from_bind_file(path: &Path) -> Result<Self, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::KeyFileRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_bind(&text).map_err(|reason| DnsError::KeyFileInvalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parse the text of a BIND key file. The error is a reason without any token.
    pub fn parse_bind(text: &str) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        let mut it = tokens.iter().peekable();
        let mut keys = Vec::new();
        while let Some(tok) = it.next() {
            if tok.text != "key" || tok.quoted {
                return Err(format!(
                    "line {}: expected a `key` statement (the only statement allowed here)",
                    tok.line
                ));
            }
            keys.push(parse_key_body(&mut it, tok.line)?);
        }
        match keys.len() {
            0 => Err("no `key` statement found".to_string()),
            1 => Ok(keys.remove(0)),
            n => Err(format!("{n} `key` statements found, expected exactly one")),
        }
    }

    /// Build a key from its parts (tests, or keys that do not come from a file).
    pub fn new(name: &str, algorithm: TsigAlg, secret: Vec<u8>) -> Self {
        TsigKey {
            name: name.trim_end_matches('.').to_string(),
            algorithm,
            secret,
        }
    }

    /// The key's name, as the server knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The HMAC algorithm.
    pub fn algorithm(&self) -> TsigAlg {
        self.algorithm
    }

    /// The secret as a key file writes it (base64), only for [`crate::infra::redact`]:
    /// a program that prints it must not get it into a log.
    pub(crate) fn secret_base64(&self) -> String {
        data_encoding::BASE64.encode(&self.secret)
    }

    /// The hickory signer for this key.
    pub(crate) fn signer(&self) -> Result<TSigner, DnsError> {
        let name = Name::from_ascii(&self.name).map_err(|_| {
            DnsError::Config(format!(
                "tsig key name {:?} is not a valid dns name",
                self.name
            ))
        })?;
        // The error type of `TSigner::new` carries only the algorithm, never the key.
        TSigner::new(
            self.secret.clone(),
            self.algorithm.to_hickory(),
            name,
            FUDGE_SECS,
        )
        .map_err(|e| DnsError::Config(format!("tsig key {:?}: {e}", self.name)))
    }
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key \"{}\" ({})", self.name, self.algorithm)
    }
}

struct Token {
    text: String,
    quoted: bool,
    line: usize,
}

/// Split named.conf syntax into words, quoted strings and `{ } ;`, dropping the
/// three comment styles BIND accepts (`#`, `//`, `/* */`).
fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let start = line;
                let mut prev = ' ';
                loop {
                    match chars.next() {
                        None => return Err(format!("line {start}: unterminated comment")),
                        Some('/') if prev == '*' => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            prev = c;
                        }
                    }
                }
            }
            '"' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("line {start}: unterminated string")),
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            s.push(c);
                        }
                    }
                }
                tokens.push(Token {
                    text: s,
                    quoted: true,
                    line: start,
                });
            }
            '{' | '}' | ';' => tokens.push(Token {
                text: c.to_string(),
                quoted: false,
                line,
            }),
            c => {
                let mut s = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                tokens.push(Token {
                    text: s,
                    quoted: false,
                    line,
                });
            }
        }
    }
    Ok(tokens)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize) {
    for c in chars.by_ref() {
        if c == '\n' {
            *line += 1;
            return;
        }
    }
}

fn expect<'a>(
    it: &mut impl Iterator<Item = &'a Token>,
    what: &str,
    line: usize,
) -> Result<&'a Token, String> {
    it.next()
        .ok_or_else(|| format!("line {line}: file ends where {what} was expected"))
}

fn expect_punct<'a>(
    it: &mut impl Iterator<Item = &'a Token>,
    punct: &str,
    line: usize,
) -> Result<(), String> {
    let tok = expect(it, &format!("`{punct}`"), line)?;
    if tok.quoted || tok.text != punct {
        return Err(format!("line {}: expected `{punct}`", tok.line));
    }
    Ok(())
}

fn parse_key_body<'a>(
    it: &mut std::iter::Peekable<impl Iterator<Item = &'a Token>>,
    line: usize,
) -> Result<TsigKey, String> {
    let name_tok = expect(it, "the key name", line)?;
    let name = name_tok.text.trim_end_matches('.').to_string();
    if name.is_empty() || name_tok.text == "{" {
        return Err(format!("line {}: the key has no name", name_tok.line));
    }
    expect_punct(it, "{", name_tok.line)?;
    let mut algorithm = None;
    let mut secret = None;
    loop {
        let tok = expect(it, "`}`", line)?;
        if !tok.quoted && tok.text == "}" {
            break;
        }
        match (tok.quoted, tok.text.as_str()) {
            (false, "algorithm") => {
                let alg = expect(it, "an algorithm", tok.line)?;
                algorithm = Some(TsigAlg::parse(&alg.text).ok_or_else(|| {
                    format!(
                        "line {}: unsupported algorithm (supported: hmac-sha256, hmac-sha384, hmac-sha512)",
                        alg.line
                    )
                })?);
            }
            (false, "secret") => {
                let s = expect(it, "the secret", tok.line)?;
                // BIND allows whitespace inside the base64 text; so do we.
                let b64: String = s.text.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = data_encoding::BASE64
                    .decode(b64.as_bytes())
                    .map_err(|_| format!("line {}: the secret is not valid base64", s.line))?;
                if bytes.is_empty() {
                    return Err(format!("line {}: the secret is empty", s.line));
                }
                secret = Some(bytes);
            }
            _ => {
                return Err(format!(
                "line {}: unexpected word in the key (only `algorithm` and `secret` are allowed)",
                tok.line
            ))
            }
        }
        expect_punct(it, ";", tok.line)?;
    }
    expect_punct(it, ";", line)?;
    let algorithm = algorithm.ok_or_else(|| format!("line {line}: the key has no `algorithm`"))?;
    let secret = secret.ok_or_else(|| format!("line {line}: the key has no `secret`"))?;
    Ok(TsigKey {
        name,
        algorithm,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";

    #[test]
    fn parses_tsig_keygen_output() {
        let text = format!(
            "# made by tsig-keygen\nkey \"cmfleet.\" {{\n\talgorithm hmac-sha512;\n\tsecret \"{SECRET}\";\n}};\n"
        );
        let key = TsigKey::parse_bind(&text).expect("valid key");
        assert_eq!(key.name(), "cmfleet");
        assert_eq!(key.algorithm(), TsigAlg::HmacSha512);
        assert!(key.signer().is_ok());
    }

    #[test]
    fn debug_and_display_redact_the_secret() {
        let text = format!("key k {{ algorithm HMAC-SHA256; secret \"{SECRET}\"; }};");
        let key = TsigKey::parse_bind(&text).expect("valid key");
        for s in [format!("{key:?}"), format!("{key}")] {
            assert!(!s.contains(SECRET), "{s}");
            assert!(s.contains("\"k\""), "{s}");
        }
    }

    #[test]
    fn errors_never_echo_tokens() {
        let cases = [
            format!("key k {{ algorithm hmac-md5; secret \"{SECRET}\"; }};"),
            format!("key k {{ algorithm hmac-sha256; {SECRET}; }};"),
            format!("key k {{ algorithm hmac-sha256; secret \"{SECRET}!\"; }};"),
            SECRET.to_string(),
            format!("key k {{ secret \"{SECRET}\"; }};"),
            "key k { algorithm hmac-sha256; };".to_string(),
            format!("key a {{ algorithm hmac-sha256; secret \"{SECRET}\"; }}; key b {{ algorithm hmac-sha256; secret \"{SECRET}\"; }};"),
        ];
        for text in cases {
            let err = TsigKey::parse_bind(&text).expect_err("must be rejected");
            assert!(!err.contains("c2VjcmV0"), "{err}");
        }
    }
}
