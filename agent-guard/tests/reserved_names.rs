//! Every hostname the project writes where a policy would use it is a reserved example name
//! (RFC 2606, RFC 6761), so the shipped policies, the docs and the README never point a
//! reader's agent at a real package registry or git host.
//!
//! Scanned, in `policies/*.toml`, `docs/**/*.md` and `README.md`:
//! - every `hosts = [...]` array of the policy files and of the TOML code blocks of the
//!   documents, commented-out lines included (a suggestion in a comment gets copied too);
//! - every `"hostname": "..."` field of the events the documents show.
//!
//! Other text is left alone on purpose: file names (`policy.md`), links and Rust paths look
//! like hostnames but name nothing a policy would reach.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// Domains reserved for documentation (RFC 2606): the name itself and every name below it.
const RESERVED_DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];
/// Top-level domains that never resolve to anything on the internet (RFC 2606, RFC 6761).
const RESERVED_TLDS: &[&str] = &["test", "example", "invalid", "localhost"];

const HINT: &str = "write a reserved name instead: NAME.example.com, NAME.example.org, \
NAME.example.net, or a name ending in .test, .example, .invalid or .localhost";

/// Whether `host` (as written in a rule: maybe `*.`-prefixed) is a reserved example name.
fn is_reserved(host: &str) -> bool {
    let name = host
        .strip_prefix("*.")
        .unwrap_or(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let within = |domain: &str| name == domain || name.ends_with(&format!(".{domain}"));
    RESERVED_DOMAINS.iter().any(|d| within(d)) || RESERVED_TLDS.iter().any(|t| within(t))
}

/// A hostname found in a file, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    line: usize,
    host: String,
}

/// Turns every comment line (first non-blank character `#`) into the text after its `#`s,
/// so commented-out entries and tables are scanned like live ones. Lines keep their count.
fn uncomment(toml: &str) -> String {
    toml.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') {
                trimmed.trim_start_matches('#')
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// Every string of every `hosts = [...]` array in `toml` (first line = line 1). An array
/// that cannot be read is an error naming its line, never skipped: a test that silently
/// found nothing would let anything through.
fn hosts_arrays(toml: &str) -> Result<Vec<Found>, String> {
    let bytes = toml.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = toml[from..].find("hosts") {
        let start = from + offset;
        from = start + "hosts".len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            continue; // known_hosts, ssh-hosts
        }
        // `hosts`, or the quoted key `"hosts"`, then `=` and `[`.
        let mut i = from;
        if before == Some(b'"') && bytes.get(i) == Some(&b'"') {
            i += 1;
        }
        let skip_blanks = |mut i: usize| {
            while matches!(bytes.get(i), Some(b' ' | b'\t')) {
                i += 1;
            }
            i
        };
        i = skip_blanks(i);
        if bytes.get(i) != Some(&b'=') {
            continue; // the word in prose, `hosts:` in YAML, a key named `hostsfile`
        }
        i = skip_blanks(i + 1);
        if bytes.get(i) != Some(&b'[') {
            return Err(format!(
                "line {}: `hosts` is not followed by an array",
                line_of(toml, start)
            ));
        }
        i += 1;
        loop {
            match bytes.get(i) {
                None => {
                    return Err(format!(
                        "line {}: the `hosts` array is not closed",
                        line_of(toml, start)
                    ))
                }
                Some(b' ' | b'\t' | b'\r' | b'\n' | b',') => i += 1,
                Some(b'#') => {
                    while !matches!(bytes.get(i), None | Some(b'\n')) {
                        i += 1;
                    }
                }
                Some(b']') => {
                    i += 1;
                    break;
                }
                // A placeholder in documentation: `hosts = [...]`.
                Some(b'.') if toml[i..].starts_with("...") => i += 3,
                Some(&quote @ (b'"' | b'\'')) => {
                    let open = i;
                    i += 1;
                    let mut host = String::new();
                    loop {
                        let Some(c) = toml[i..].chars().next() else {
                            return Err(format!(
                                "line {}: a string in a `hosts` array is not closed",
                                line_of(toml, open)
                            ));
                        };
                        i += c.len_utf8();
                        match c {
                            '\n' => {
                                return Err(format!(
                                    "line {}: a string in a `hosts` array is not closed",
                                    line_of(toml, open)
                                ))
                            }
                            '\\' if quote == b'"' => {
                                if let Some(escaped) = toml[i..].chars().next() {
                                    i += escaped.len_utf8();
                                    host.push(escaped);
                                }
                            }
                            c if c as u32 == u32::from(quote) => break,
                            c => host.push(c),
                        }
                    }
                    found.push(Found {
                        line: line_of(toml, open),
                        host,
                    });
                }
                Some(_) => {
                    let rest: String = toml[i..].chars().take(30).collect();
                    return Err(format!(
                        "line {}: cannot read this `hosts` array at `{rest}`",
                        line_of(toml, i)
                    ));
                }
            }
        }
        from = i;
    }
    Ok(found)
}

/// The TOML code blocks (fenced, info string `toml`) of a Markdown text, each with the line
/// its first line has in the document. Fences may be indented (blocks inside list items).
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, bool, usize, Vec<&str>)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let fence: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let is_fence = fence.len() >= 3 && fence.chars().all(|c| c == fence.as_bytes()[0] as char);
        match &mut open {
            None if is_fence => {
                let info = trimmed[fence.len()..].trim();
                let is_toml = info.split_whitespace().next() == Some("toml");
                open = Some((fence, is_toml, index + 2, Vec::new()));
            }
            None => {}
            Some((opening, _, _, _))
                if is_fence
                    && fence.starts_with(opening.as_str())
                    && trimmed[fence.len()..].trim().is_empty() =>
            {
                let (_, is_toml, first, lines) = open.take().expect("a block is open");
                if is_toml {
                    blocks.push((first, lines.join("\n")));
                }
            }
            Some((_, _, _, lines)) => lines.push(line),
        }
    }
    blocks
}

/// Every `"hostname": "..."` field in `text` (events shown in the documents).
fn hostname_fields(text: &str) -> Vec<Found> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("\"hostname\"") {
        let rest = text[at + "\"hostname\"".len()..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = value.find('"') {
            found.push(Found {
                line: line_of(text, at),
                host: value[..end].to_owned(),
            });
        }
    }
    found
}

/// The hostnames of one file, by its kind.
fn hostnames_in(path: &Path) -> Result<Vec<Found>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => hosts_arrays(&uncomment(&text)),
        Some("md") => {
            let mut found = hostname_fields(&text);
            for (first, block) in toml_blocks(&text) {
                let hosts = hosts_arrays(&uncomment(&block))
                    .map_err(|e| format!("in the TOML block at line {first}: {e}"))?;
                found.extend(hosts.into_iter().map(|f| Found {
                    line: f.line + first - 1,
                    host: f.host,
                }));
            }
            found.sort_by_key(|f| f.line);
            Ok(found)
        }
        _ => Ok(Vec::new()),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// Files with `extension` in `dir` and, when `recursive`, below it; sorted.
fn files(dir: &Path, extension: &str, recursive: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if recursive {
                out.extend(files(&path, extension, recursive));
            }
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn every_hostname_in_policies_and_docs_is_a_reserved_example() {
    let root = root();
    let mut scanned = files(&root.join("policies"), "toml", false);
    let policies = scanned.len();
    scanned.extend(files(&root.join("docs"), "md", true));
    scanned.push(root.join("README.md"));
    assert!(policies >= 3, "policies/ ships at least three files");

    let mut problems = Vec::new();
    let mut count = |path: &Path| -> usize {
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        match hostnames_in(path) {
            Ok(found) => {
                for f in &found {
                    if !is_reserved(&f.host) {
                        let why = if f.host.parse::<std::net::IpAddr>().is_ok() {
                            "is an address: addresses belong in `addresses`"
                        } else {
                            "is not a reserved example name"
                        };
                        problems.push(format!("{shown}:{}: `{}` {why}", f.line, f.host));
                    }
                }
                found.len()
            }
            Err(e) => {
                problems.push(format!("{shown}: {e}"));
                0
            }
        }
    };
    let mut per_file = Vec::new();
    for path in &scanned {
        per_file.push((path.clone(), count(path)));
    }
    assert!(problems.is_empty(), "{}\n{HINT}", problems.join("\n"));

    // The scan must have seen the allow-lists it exists for, or it proves nothing.
    for expected in [
        "policies/coding-agent.toml",
        "policies/ci-runner.toml",
        "docs/policy.md",
    ] {
        let seen = per_file
            .iter()
            .find(|(p, _)| p.ends_with(expected))
            .map_or(0, |(_, n)| *n);
        assert!(
            seen > 0,
            "no hostname found in {expected}: it has hostname rules, so the scan is broken"
        );
    }
}

#[test]
fn reserved_names_are_told_from_others() {
    for host in [
        "example.com",
        "git.example.com",
        "*.pkg.example.org",
        "mirror.example.net.",
        "GIT.EXAMPLE.COM",
        "registry.test",
        "a.b.example",
        "nowhere.invalid",
        "localhost",
        "api.localhost",
    ] {
        assert!(is_reserved(host), "{host} is reserved");
    }
    for host in [
        "notexample.com",
        "example.com.evil.invalid.co",
        "pkg.example.co",
        "mirror.internal",
        "*.mirror.corp",
        "localhost.localdomain",
        "192.0.2.1",
        "",
    ] {
        assert!(!is_reserved(host), "{host} is not reserved");
    }
}

#[test]
fn hosts_arrays_are_read_whatever_their_layout() {
    let toml = r#"
[[network.rule]]
name = "ssh-known-hosts"
paths = ["~/.ssh/known_hosts?"]
hosts = ["a.example.com", 'b.example.org']
[[network.rule]]
hosts = [
  "c.example.net",   # a comment with "quotes.example" and 'apostrophes'
# "commented.example.com",
  "d\"e.test",
]
"hosts" = ["quoted-key.test"]
inline = { hosts = ["inline.test"] }
placeholder = { hosts = [...] }
"#;
    let found = hosts_arrays(&uncomment(toml)).unwrap();
    let hosts: Vec<(usize, &str)> = found.iter().map(|f| (f.line, f.host.as_str())).collect();
    assert_eq!(
        hosts,
        [
            (5, "a.example.com"),
            (5, "b.example.org"),
            (8, "c.example.net"),
            (9, "commented.example.com"),
            (10, "d\"e.test"),
            (12, "quoted-key.test"),
            (13, "inline.test"),
        ]
    );
    assert!(hosts_arrays("hosts = \"x.test\"\n").is_err());
    assert!(hosts_arrays("hosts = [\"x.test\"\n").is_err());
    assert!(hosts_arrays("hosts = [x.test]\n").is_err());
    // Prose and other keys are not arrays of hosts.
    assert_eq!(
        hosts_arrays("# the hosts are resolved\nknown_hosts = [\"x\"]\n").unwrap(),
        []
    );
}

#[test]
fn documents_are_scanned_in_toml_blocks_and_event_fields_only() {
    let markdown = "\
See [docs.rs](https://docs.rs/x) and policy.md; `hosts = [\"inline.example.com\"]`.

```toml
[[network.rule]]
hosts = [\"git.example.com\"]
```

- In a list:

  ```toml
  hosts = [\"listed.example.org\"]
  ```

```json
{\"op\":\"connect\",\"hostname\":\"pkg.example.org\",\"port\":443}
```

```sh
echo 'hosts = [\"shell.example.net\"]'
```
";
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("doc.md");
    fs::write(&path, markdown).unwrap();
    let found = hostnames_in(&path).unwrap();
    let hosts: Vec<(usize, &str)> = found.iter().map(|f| (f.line, f.host.as_str())).collect();
    assert_eq!(
        hosts,
        [
            (5, "git.example.com"),
            (11, "listed.example.org"),
            (15, "pkg.example.org"),
        ]
    );
}
