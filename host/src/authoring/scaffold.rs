//! `weir filter new`: writes a ready-to-build filter project, so a team can go from
//! nothing to its own filter running in a route in minutes.
//!
//! 1. [`validate_name`] checks the filter's name, which also names the project's
//!    crate, package or module and its `.wasm` file.
//! 2. [`create`] writes the project for a [`Lang`] into an absent or empty directory:
//!    the filter's source (a small, real filter that sets a configured header, logs
//!    through `log` and validates its config), `wit/filter.wit` as this weir has it, a
//!    build and a test command, `config.json` and `cases.toml` for
//!    `weir filter test`, a `weir.toml` with a route that runs the filter, and a README.
//! 3. [`Project::next_steps`] is what to tell the user to run next.
//!
//! The templates live in `host/src/authoring/templates/` and are compiled into the binary, as are
//! the WIT file and, for Rust, the SDK's sources (vendored into the project, since the
//! `weir-filter` crate is not published): a project always matches the weir that made it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The 0.1 WIT, as this weir has it: what 0.1 components are built against, and what
/// the 0.2 world imports its unchanged interfaces from.
const WIT: &str = include_str!("../../../wit/filter.wit");

/// The 0.2 WIT, which the templates target; its world imports 0.1's unchanged
/// interfaces from `deps/`.
const WIT_V2: &str = include_str!("../../../wit/v0.2/filter.wit");

/// A language a filter project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with weir's SDK (`weir-filter`) copied into the project.
    Rust,
    /// JavaScript, built with componentize-js (npm).
    Js,
    /// Python, built with componentize-py.
    Python,
    /// C, built with clang, wit-bindgen and wasm-tools.
    C,
}

/// One file of a project.
struct Template {
    /// Where it goes, relative to the project directory.
    path: &'static str,
    /// Its text.
    text: &'static str,
    /// Whether its `{{placeholders}}` are filled in; if not, it is copied as it is.
    fill: bool,
    /// Whether it is a script to run.
    executable: bool,
}

/// A file with placeholders.
const fn template(path: &'static str, text: &'static str) -> Template {
    Template {
        path,
        text,
        fill: true,
        executable: false,
    }
}

/// A script with placeholders.
const fn script(path: &'static str, text: &'static str) -> Template {
    Template {
        path,
        text,
        fill: true,
        executable: true,
    }
}

/// A script copied as it is.
const fn copied_script(path: &'static str, text: &'static str) -> Template {
    Template {
        path,
        text,
        fill: false,
        executable: true,
    }
}

/// The files every project has; the README's language-specific parts come from
/// [`Lang::readme_parts`].
const COMMON: &[Template] = &[
    template("README.md", include_str!("templates/common/README.md")),
    template("config.json", include_str!("templates/common/config.json")),
    template("cases.toml", include_str!("templates/common/cases.toml")),
    template("weir.toml", include_str!("templates/common/weir.toml")),
    Template {
        path: "wit/filter.wit",
        text: WIT,
        fill: false,
        executable: false,
    },
    Template {
        path: "wit/v0.2/filter.wit",
        text: WIT_V2,
        fill: false,
        executable: false,
    },
    Template {
        path: "wit/v0.2/deps/weir-filter-0.1.wit",
        text: WIT,
        fill: false,
        executable: false,
    },
];

const RUST: &[Template] = &[
    template("Cargo.toml", include_str!("templates/rust/Cargo.toml.tmpl")),
    template("src/lib.rs", include_str!("templates/rust/src/lib.rs")),
    script("build.sh", include_str!("templates/rust/build.sh")),
    script("test.sh", include_str!("templates/rust/test.sh")),
    template(".gitignore", include_str!("templates/rust/gitignore")),
];

const JS: &[Template] = &[
    template("filter.js", include_str!("templates/js/filter.js")),
    template("package.json", include_str!("templates/js/package.json")),
    // The example's own script: `npm ci` from the lock file `npm_deps` writes.
    copied_script(
        "setup.sh",
        include_str!("../../../examples/filters/js/setup.sh"),
    ),
    template(".gitignore", include_str!("templates/js/gitignore")),
];

const PYTHON: &[Template] = &[
    template("app.py", include_str!("templates/python/app.py")),
    script("build.sh", include_str!("templates/python/build.sh")),
    script("test.sh", include_str!("templates/python/test.sh")),
    // The example's own script, so the pinned componentize-py is the one weir is tested with.
    copied_script(
        "setup.sh",
        include_str!("../../../examples/filters/python/setup.sh"),
    ),
    template(".gitignore", include_str!("templates/python/gitignore")),
];

const C: &[Template] = &[
    template("filter.c", include_str!("templates/c/filter.c")),
    template("Makefile", include_str!("templates/c/Makefile")),
    // The example's own script, so the pinned tools are the ones weir is tested with.
    script(
        "setup.sh",
        include_str!("../../../examples/filters/c/setup.sh"),
    ),
    template(".gitignore", include_str!("templates/c/gitignore")),
];

/// The README's language-specific parts.
struct ReadmeParts {
    /// "Rust", "JavaScript", …
    language: &'static str,
    /// Bullet lines for "Prerequisites", after the one about weir.
    prerequisites: &'static str,
    /// Table rows for "Layout", after the source file's.
    layout: &'static str,
    /// The file a user edits.
    source: &'static str,
    /// What to run once before the first build, if anything.
    setup: Option<&'static str>,
    /// The build command.
    build: &'static str,
    /// The one command that builds and runs every test.
    test: &'static str,
}

impl Lang {
    fn templates(self) -> &'static [Template] {
        match self {
            Lang::Rust => RUST,
            Lang::Js => JS,
            Lang::Python => PYTHON,
            Lang::C => C,
        }
    }

    fn readme_parts(self) -> ReadmeParts {
        match self {
            Lang::Rust => ReadmeParts {
                language: "Rust",
                prerequisites: include_str!("templates/rust/prerequisites.md"),
                layout: include_str!("templates/rust/layout.md"),
                source: "src/lib.rs",
                setup: None,
                build: "./build.sh",
                test: "./test.sh",
            },
            Lang::Js => ReadmeParts {
                language: "JavaScript",
                prerequisites: include_str!("templates/js/prerequisites.md"),
                layout: include_str!("templates/js/layout.md"),
                source: "filter.js",
                setup: Some("./setup.sh"),
                build: "npm run build",
                test: "npm test",
            },
            Lang::Python => ReadmeParts {
                language: "Python",
                prerequisites: include_str!("templates/python/prerequisites.md"),
                layout: include_str!("templates/python/layout.md"),
                source: "app.py",
                setup: Some("./setup.sh"),
                build: "./build.sh",
                test: "./test.sh",
            },
            Lang::C => ReadmeParts {
                language: "C",
                prerequisites: include_str!("templates/c/prerequisites.md"),
                layout: include_str!("templates/c/layout.md"),
                source: "filter.c",
                setup: Some("./setup.sh"),
                build: "make",
                test: "make test",
            },
        }
    }

    /// Words the language reserves, which cannot name a crate, package or module.
    fn reserved(self) -> &'static [&'static str] {
        match self {
            Lang::Rust => RUST_RESERVED,
            // The name appears only in strings and file names.
            Lang::Js | Lang::Python | Lang::C => &[],
        }
    }
}

/// Rust's keywords, and crates a package name must not shadow.
#[rustfmt::skip]
const RUST_RESERVED: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod",
    "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait",
    "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do",
    "final", "gen", "macro", "override", "priv", "try", "typeof", "unsized", "virtual",
    "yield", "alloc", "core", "std", "test", "proc_macro", "proc-macro", "weir-filter",
    "weir_filter",
];

/// Why a project could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot name a filter.
    #[error("invalid filter name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory has files in it already.
    #[error("{} already exists and is not empty; choose another --dir or remove it", .0.display())]
    NotEmpty(PathBuf),
    /// The path exists and is not a directory.
    #[error("{} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Reading or writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The longest name accepted: it becomes file, crate and metric label names.
const MAX_NAME_LEN: usize = 64;

/// Checks that `name` can name a filter written in `lang`: 1 to 64 lowercase ASCII
/// letters, digits, `-` and `_`, starting with a letter, not ending with `-` or `_`,
/// without two of them in a row, and not a word the language reserves.
pub fn validate_name(name: &str, lang: Lang) -> Result<(), ScaffoldError> {
    let invalid = |reason: &str| {
        Err(ScaffoldError::InvalidName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let is_separator = |c: char| c == '-' || c == '_';
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid(&format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid("it must start with a lowercase letter (a-z)");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || is_separator(c)))
    {
        return invalid(&format!(
            "{c:?} is not allowed; use lowercase letters, digits, `-` and `_`"
        ));
    }
    if name.ends_with(is_separator) {
        return invalid("it must not end with `-` or `_`");
    }
    if name.contains("--") || name.contains("__") || name.contains("-_") || name.contains("_-") {
        return invalid("it must not have two `-` or `_` in a row");
    }
    if lang.reserved().contains(&name) {
        let parts = lang.readme_parts();
        return invalid(&format!(
            "{} reserves it; choose another name",
            parts.language
        ));
    }
    Ok(())
}

/// A project [`create`] wrote.
#[derive(Debug)]
pub struct Project {
    /// The filter's name.
    pub name: String,
    /// Its language.
    pub lang: Lang,
    /// The project directory, as given.
    pub dir: PathBuf,
    /// The files written, relative to `dir`, in the order written.
    pub files: Vec<PathBuf>,
}

impl Project {
    /// What to tell the user: where the project is and the commands that build, test
    /// and run it. `weir` is how the user runs this weir: `"weir"` when it is the one
    /// on `PATH`, else its path (see [`weir_command`]).
    pub fn next_steps(&self, weir: &str) -> String {
        let parts = self.lang.readme_parts();
        let name = &self.name;
        let test = if weir == "weir" {
            parts.test.to_owned()
        } else {
            format!("WEIR={} {}", shell_quote(weir), parts.test)
        };
        let weir = shell_quote(weir);
        let mut steps = vec![(
            format!("cd {}", shell_quote(&self.dir.display().to_string())),
            String::new(),
        )];
        if let Some(setup) = parts.setup {
            steps.push((
                setup.to_owned(),
                "install the build tools (once)".to_owned(),
            ));
        }
        steps.push((
            test,
            format!("build {name}.wasm and run the cases in cases.toml"),
        ));
        steps.push((
            format!("{weir} run weir.toml"),
            "serve it on 127.0.0.1:8080 (then: curl -s http://127.0.0.1:8080/anything)".to_owned(),
        ));
        let width = steps
            .iter()
            .filter(|(_, why)| !why.is_empty())
            .map(|(cmd, _)| cmd.len())
            .max()
            .unwrap_or(0);
        let mut out = format!(
            "created {name}, a weir filter in {}, in {}\n\nnext:\n",
            parts.language,
            self.dir.display()
        );
        for (cmd, why) in steps {
            if why.is_empty() {
                let _ = writeln!(out, "  {cmd}");
            } else {
                let _ = writeln!(out, "  {cmd:width$}  # {why}");
            }
        }
        let _ = writeln!(
            out,
            "\nthe filter is in {}; {} says more",
            self.dir.join(parts.source).display(),
            self.dir.join("README.md").display()
        );
        out
    }
}

/// Writes a new project for the filter `name` in `lang` into `dir`, which must be
/// absent or empty. On failure nothing is left behind in a directory this call created.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<Project, ScaffoldError> {
    validate_name(name, lang)?;
    let created = prepare_dir(dir)?;
    let files = render(name, lang);
    let result = files
        .iter()
        .try_for_each(|f| write_file(dir, &f.path, &f.text, f.executable));
    if let Err(e) = result {
        if created {
            // Best effort: the write error is the one worth reporting.
            let _ = std::fs::remove_dir_all(dir);
        }
        return Err(e);
    }
    Ok(Project {
        name: name.to_owned(),
        lang,
        dir: dir.to_owned(),
        files: files.into_iter().map(|f| f.path).collect(),
    })
}

/// Makes sure `dir` exists and is empty; returns whether it had to be created.
fn prepare_dir(dir: &Path) -> Result<bool, ScaffoldError> {
    let io = |source| ScaffoldError::Io {
        path: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(ScaffoldError::NotADirectory(dir.to_owned())),
        Ok(_) => match std::fs::read_dir(dir).map_err(io)?.next() {
            Some(_) => Err(ScaffoldError::NotEmpty(dir.to_owned())),
            None => Ok(false),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
            Ok(true)
        }
        Err(e) => Err(io(e)),
    }
}

fn write_file(dir: &Path, rel: &Path, text: &str, executable: bool) -> Result<(), ScaffoldError> {
    let path = dir.join(rel);
    let io = |source| ScaffoldError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, text).map_err(io)?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    Ok(())
}

/// A file ready to write.
struct File {
    path: PathBuf,
    text: String,
    executable: bool,
}

/// Every file of the project, with its placeholders filled in.
fn render(name: &str, lang: Lang) -> Vec<File> {
    let parts = lang.readme_parts();
    let mut vars = vec![
        ("name", name.to_owned()),
        ("name_snake", name.replace('-', "_")),
        ("weir_version", env!("CARGO_PKG_VERSION").to_owned()),
        ("language", parts.language.to_owned()),
        ("source", parts.source.to_owned()),
        ("build", build_steps(&parts)),
        ("test", parts.test.to_owned()),
    ];
    let mut files = Vec::new();
    if lang == Lang::Rust {
        let sdk = rust_sdk::vendored();
        vars.push(("serde", sdk.serde));
        vars.push(("rust_version", sdk.rust_version));
        files.extend(sdk.files.into_iter().map(|(path, text)| File {
            path,
            text,
            executable: false,
        }));
    }
    if lang == Lang::Js {
        let deps = npm_deps::pinned(name);
        vars.push(("npm_engines", deps.engines));
        vars.push(("npm_dev_dependencies", deps.dev_dependencies));
        vars.push(("npm_overrides", deps.overrides));
        files.push(File {
            path: PathBuf::from("package-lock.json"),
            text: deps.lock,
            executable: false,
        });
    }
    // The README's fragments have placeholders of their own.
    let prerequisites = fill(parts.prerequisites, &vars);
    let layout = fill(parts.layout, &vars);
    vars.push(("prerequisites", prerequisites.trim_end().to_owned()));
    vars.push(("layout", layout));
    let templates = COMMON.iter().chain(lang.templates());
    let mut out: Vec<File> = templates
        .map(|t| File {
            path: PathBuf::from(t.path),
            text: if t.fill {
                fill(t.text, &vars)
            } else {
                t.text.to_owned()
            },
            executable: t.executable,
        })
        .collect();
    out.extend(files);
    out
}

/// The README's "Build" block: the setup step, if any, then the build.
fn build_steps(parts: &ReadmeParts) -> String {
    match parts.setup {
        Some(setup) => format!("{setup}    # once: the build tools\n{}", parts.build),
        None => parts.build.to_owned(),
    }
}

/// Replaces every `{{key}}` in `text` with its value from `vars`. Other braces (C
/// initialisers, JS objects) are left alone.
///
/// # Panics
///
/// On a `{{key}}` that `vars` lacks: the templates are compiled in, and the tests fill
/// every one of them.
fn fill(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let key_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(after.len());
        if key_len > 0 && after[key_len..].starts_with("}}") {
            let key = &after[..key_len];
            let value = vars
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("template placeholder {{{{{key}}}}} has no value"));
            out.push_str(value);
            rest = &after[key_len + 2..];
        } else {
            out.push_str("{{");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `s` as one shell word: as it is when that is safe, else in single quotes.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How the user runs this weir: `"weir"` if `weir` on `PATH` is this executable, else
/// this executable's path.
pub fn weir_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "weir".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("weir"))
            .find(|p| p.is_file())
            .is_some_and(|p| p.canonicalize().is_ok_and(|p| p == me))
    });
    if on_path {
        "weir".to_owned()
    } else {
        me.display().to_string()
    }
}

/// weir's Rust SDK, copied into a Rust project as `weir-filter/`.
mod rust_sdk {
    use std::path::PathBuf;

    /// The SDK's sources, as in `sdk/src/`. A test checks that the list is complete.
    pub(super) const SOURCES: &[(&str, &str)] = &[
        (
            "__private.rs",
            include_str!("../../../sdk/src/__private.rs"),
        ),
        ("bindings.rs", include_str!("../../../sdk/src/bindings.rs")),
        ("codec.rs", include_str!("../../../sdk/src/codec.rs")),
        ("config.rs", include_str!("../../../sdk/src/config.rs")),
        ("http.rs", include_str!("../../../sdk/src/http.rs")),
        ("lib.rs", include_str!("../../../sdk/src/lib.rs")),
        ("log.rs", include_str!("../../../sdk/src/log.rs")),
        ("metrics.rs", include_str!("../../../sdk/src/metrics.rs")),
        ("outbound.rs", include_str!("../../../sdk/src/outbound.rs")),
        ("state.rs", include_str!("../../../sdk/src/state.rs")),
        ("units.rs", include_str!("../../../sdk/src/units.rs")),
    ];

    /// The SDK's manifest, which inherits from the workspace's.
    const MANIFEST: &str = include_str!("../../../sdk/Cargo.toml");
    const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

    /// The SDK as a project gets it.
    pub(super) struct Vendored {
        /// `weir-filter/Cargo.toml` and `weir-filter/src/*.rs`. The SDK finds the WIT
        /// at `../wit/v0.2`, the project's `wit/v0.2/`.
        pub files: Vec<(PathBuf, String)>,
        /// The workspace's `serde` dependency, as an inline TOML table.
        pub serde: String,
        /// The oldest Rust the SDK builds with.
        pub rust_version: String,
    }

    /// The SDK's files with a standalone manifest: every `workspace = true` replaced by
    /// the workspace's value, so the versions are the ones weir itself builds with.
    ///
    /// # Panics
    ///
    /// If the compiled-in manifests are not what the workspace has (a test checks).
    pub(super) fn vendored() -> Vendored {
        let workspace: toml::Table = WORKSPACE_MANIFEST
            .parse()
            .expect("the workspace Cargo.toml parses");
        let ws = workspace["workspace"]
            .as_table()
            .expect("the workspace Cargo.toml has [workspace]");
        let ws_package = ws["package"].as_table().expect("[workspace.package]");
        let ws_deps = ws["dependencies"]
            .as_table()
            .expect("[workspace.dependencies]");
        let mut manifest: toml::Table = MANIFEST.parse().expect("sdk/Cargo.toml parses");
        for (key, value) in manifest["package"]
            .as_table_mut()
            .expect("sdk/Cargo.toml has [package]")
        {
            if is_inherited(value) {
                *value = ws_package[key.as_str()].clone();
            }
        }
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get_mut(section).and_then(|d| d.as_table_mut()) else {
                continue;
            };
            for (name, dep) in deps.iter_mut() {
                if is_inherited(dep) {
                    *dep = inherit_dependency(&ws_deps[name.as_str()], dep);
                }
            }
        }
        // The SDK's own tests and doc examples need the whole weir repository.
        manifest.remove("dev-dependencies");
        let rust_version = manifest["package"]
            .get("rust-version")
            .and_then(|v| v.as_str())
            .unwrap_or("1.85")
            .to_owned();
        let header = format!(
            "# weir's Rust SDK, copied from weir {} by `weir filter new`.\n\n",
            env!("CARGO_PKG_VERSION")
        );
        let mut files = vec![(
            PathBuf::from("weir-filter/Cargo.toml"),
            header + &manifest_text(manifest),
        )];
        files.extend(SOURCES.iter().map(|(file, text)| {
            (
                PathBuf::from("weir-filter/src").join(file),
                (*text).to_owned(),
            )
        }));
        Vendored {
            files,
            serde: inline(&ws_deps["serde"]),
            rust_version,
        }
    }

    /// The manifest as TOML: `[package]` first (a `toml::Table` sorts its keys), and each
    /// dependency on one line, as people write them.
    fn manifest_text(mut manifest: toml::Table) -> String {
        let mut sections = Vec::new();
        for key in ["package", "lib"] {
            if let Some(value) = manifest.remove(key) {
                sections.push((key.to_owned(), value));
            }
        }
        sections.extend(manifest);
        let mut out = String::new();
        for (key, value) in sections {
            if !out.is_empty() {
                out.push('\n');
            }
            match value {
                toml::Value::Table(deps) if key.ends_with("dependencies") => {
                    out.push_str(&format!("[{key}]\n"));
                    for (name, dep) in deps {
                        out.push_str(&format!("{name} = {dep}\n"));
                    }
                }
                value => {
                    let section = toml::Table::from_iter([(key, value)]);
                    out.push_str(&toml::to_string(&section).expect("a TOML table serialises"));
                }
            }
        }
        out
    }

    /// `key.workspace = true`.
    fn is_inherited(value: &toml::Value) -> bool {
        value
            .get("workspace")
            .and_then(|w| w.as_bool())
            .unwrap_or(false)
    }

    /// A member's `{ workspace = true, … }` resolved against the workspace's entry:
    /// the member may add `features` and `optional`.
    fn inherit_dependency(workspace: &toml::Value, member: &toml::Value) -> toml::Value {
        let mut dep = match workspace {
            toml::Value::String(version) => {
                toml::Table::from_iter([("version".to_owned(), version.clone().into())])
            }
            other => other.as_table().expect("a dependency is a table").clone(),
        };
        let member = member
            .as_table()
            .expect("an inherited dependency is a table");
        for (key, value) in member {
            match key.as_str() {
                "workspace" => {}
                "features" => {
                    let features = dep
                        .entry("features")
                        .or_insert_with(|| toml::Value::Array(Vec::new()))
                        .as_array_mut()
                        .expect("features is a list");
                    for f in value.as_array().expect("features is a list") {
                        if !features.contains(f) {
                            features.push(f.clone());
                        }
                    }
                }
                _ => {
                    dep.insert(key.clone(), value.clone());
                }
            }
        }
        // A version alone reads best as `"1"`.
        match dep.get("version") {
            Some(version) if dep.len() == 1 => version.clone(),
            _ => toml::Value::Table(dep),
        }
    }

    /// A dependency as the right-hand side of `name = …`.
    fn inline(dep: &toml::Value) -> String {
        dep.to_string()
    }
}

/// The JavaScript build tools, pinned as the JavaScript example pins them.
mod npm_deps {
    use serde_json::Value;

    const PACKAGE: &str = include_str!("../../../examples/filters/js/package.json");
    const LOCK: &str = include_str!("../../../examples/filters/js/package-lock.json");

    /// What a project's `package.json` takes from the example's, as JSON values that sit
    /// one level deep, and the example's lock file made the project's.
    pub(super) struct Pinned {
        pub engines: String,
        pub dev_dependencies: String,
        pub overrides: String,
        pub lock: String,
    }

    /// The example's dependencies, and its lock file with the root package renamed
    /// `name`, so `npm ci` installs exactly the versions weir is tested with.
    ///
    /// # Panics
    ///
    /// If the compiled-in example files are not a package.json and a lock file (a test
    /// checks).
    pub(super) fn pinned(name: &str) -> Pinned {
        let package: Value =
            serde_json::from_str(PACKAGE).expect("the JS example's package.json parses");
        let nested = |key: &str| {
            let value = package
                .get(key)
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            serde_json::to_string_pretty(&value)
                .expect("JSON serialises")
                .replace('\n', "\n  ")
        };
        let mut lock: Value =
            serde_json::from_str(LOCK).expect("the JS example's package-lock.json parses");
        lock["name"] = name.into();
        let root = &mut lock["packages"][""];
        root["name"] = name.into();
        root["version"] = "0.1.0".into();
        // The project's package.json has no license of its own: that is the team's call.
        if let Some(root) = root.as_object_mut() {
            root.remove("license");
        }
        Pinned {
            engines: nested("engines"),
            dev_dependencies: nested("devDependencies"),
            overrides: nested("overrides"),
            lock: serde_json::to_string_pretty(&lock).expect("JSON serialises") + "\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Lang] = &[Lang::Rust, Lang::Js, Lang::Python, Lang::C];

    #[test]
    fn names_that_can_name_a_filter_are_accepted() {
        for name in ["stamp", "add-team", "a", "x1", "team_tag", "v2-signer"] {
            for &lang in ALL {
                validate_name(name, lang).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let cases = [
            ("", "it is empty"),
            ("Stamp", "it must start with a lowercase letter (a-z)"),
            ("1stamp", "it must start with a lowercase letter (a-z)"),
            ("-stamp", "it must start with a lowercase letter (a-z)"),
            (
                "my filter",
                "' ' is not allowed; use lowercase letters, digits, `-` and `_`",
            ),
            (
                "stAmp",
                "'A' is not allowed; use lowercase letters, digits, `-` and `_`",
            ),
            (
                "a/b",
                "'/' is not allowed; use lowercase letters, digits, `-` and `_`",
            ),
            (
                "a.b",
                "'.' is not allowed; use lowercase letters, digits, `-` and `_`",
            ),
            ("stamp-", "it must not end with `-` or `_`"),
            ("a--b", "it must not have two `-` or `_` in a row"),
            ("a_-b", "it must not have two `-` or `_` in a row"),
            ("fn", "Rust reserves it; choose another name"),
            ("weir-filter", "Rust reserves it; choose another name"),
        ];
        for (name, reason) in cases {
            let err = validate_name(name, Lang::Rust).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid filter name `{name}`: {reason}")
            );
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(
            validate_name(&long, Lang::Rust)
                .unwrap_err()
                .to_string()
                .ends_with("it is longer than 64 characters")
        );
        validate_name(&"a".repeat(MAX_NAME_LEN), Lang::Rust).unwrap();
    }

    #[test]
    fn every_placeholder_of_every_language_is_filled() {
        for &lang in ALL {
            let filled: Vec<&Path> = COMMON
                .iter()
                .chain(lang.templates())
                .filter(|t| t.fill)
                .map(|t| Path::new(t.path))
                .collect();
            for file in render("my-filter", lang) {
                if !filled.contains(&file.path.as_path()) {
                    continue; // copied as it is
                }
                // `fill` panics on an unknown key; this catches a placeholder that came
                // in through a value (a README fragment) and was never filled.
                let left = fill(&file.text, &[]);
                assert_eq!(left, file.text, "{lang:?} {}", file.path.display());
            }
        }
    }

    #[test]
    fn fill_replaces_known_keys_and_leaves_other_braces() {
        let vars = [("name", "stamp".to_owned())];
        assert_eq!(
            fill("x {{name}} {{0}} {{ a }} {{name}}}", &vars),
            "x stamp {{0}} {{ a }} stamp}"
        );
        assert_eq!(fill("ends with {{", &vars), "ends with {{");
    }

    #[test]
    #[should_panic(expected = "template placeholder {{nope}} has no value")]
    fn an_unknown_placeholder_is_a_bug() {
        fill("{{nope}}", &[]);
    }

    #[test]
    fn the_vendored_sdk_has_every_source_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = rust_sdk::SOURCES.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            embedded, on_disk,
            "rust_sdk::SOURCES must list every file in sdk/src"
        );
    }

    #[test]
    fn the_vendored_sdk_manifest_stands_alone() {
        let sdk = rust_sdk::vendored();
        let (_, manifest) = sdk
            .files
            .iter()
            .find(|(p, _)| p == Path::new("weir-filter/Cargo.toml"))
            .unwrap();
        assert!(!manifest.contains("workspace"), "{manifest}");
        let manifest: toml::Table = manifest.parse().unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("weir-filter"));
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let deps = manifest["dependencies"].as_table().unwrap();
        assert_eq!(deps["wit-bindgen"].as_str(), Some("0.61"));
        assert_eq!(
            deps["serde"]["features"].as_array().unwrap(),
            &vec![toml::Value::from("derive")]
        );
        assert_eq!(sdk.serde, r#"{ features = ["derive"], version = "1" }"#);
    }

    #[test]
    fn a_js_project_pins_the_examples_tools() {
        let files = render("tagger", Lang::Js);
        let file = |path: &str| {
            let text = &files
                .iter()
                .find(|f| f.path == Path::new(path))
                .unwrap_or_else(|| panic!("no {path}"))
                .text;
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|e| panic!("{path} is not JSON: {e}\n{text}"))
        };
        let example: serde_json::Value =
            serde_json::from_str(include_str!("../../../examples/filters/js/package.json"))
                .unwrap();
        let package = file("package.json");
        assert_eq!(package["name"], "tagger");
        for key in ["devDependencies", "overrides", "engines"] {
            assert_eq!(package[key], example[key], "{key}");
        }
        let lock = file("package-lock.json");
        assert_eq!(lock["name"], "tagger");
        let root = &lock["packages"][""];
        assert_eq!(root["name"], "tagger");
        assert_eq!(root["devDependencies"], package["devDependencies"]);
    }

    #[test]
    fn a_project_is_refused_in_a_non_empty_directory_and_over_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
        let err = create("stamp", Lang::Rust, tmp.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} already exists and is not empty; choose another --dir or remove it",
                tmp.path().display()
            )
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
            "mine"
        );
        let file = tmp.path().join("keep.txt");
        let err = create("stamp", Lang::Rust, &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} exists and is not a directory", file.display())
        );
    }

    #[test]
    fn a_project_goes_into_an_empty_or_new_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let project = create("stamp", Lang::Rust, tmp.path()).unwrap();
        assert!(project.files.contains(&PathBuf::from("cases.toml")));
        let nested = tmp.path().join("a/b/stamp");
        create("stamp", Lang::Rust, &nested).unwrap();
        assert_eq!(
            std::fs::read_to_string(nested.join("wit/filter.wit")).unwrap(),
            WIT
        );
        let mode = std::fs::metadata(nested.join("test.sh"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o111, 0o111);
    }

    #[test]
    fn next_steps_name_the_commands() {
        let project = Project {
            name: "stamp".into(),
            lang: Lang::Rust,
            dir: PathBuf::from("my dir/stamp"),
            files: Vec::new(),
        };
        assert_eq!(
            project.next_steps("weir"),
            "created stamp, a weir filter in Rust, in my dir/stamp\n\
             \n\
             next:\n  \
               cd 'my dir/stamp'\n  \
               ./test.sh           # build stamp.wasm and run the cases in cases.toml\n  \
               weir run weir.toml  # serve it on 127.0.0.1:8080 (then: curl -s http://127.0.0.1:8080/anything)\n\
             \n\
             the filter is in my dir/stamp/src/lib.rs; my dir/stamp/README.md says more\n"
        );
        let steps = project.next_steps("/opt/weir/bin/weir");
        assert!(
            steps.contains("\n  WEIR=/opt/weir/bin/weir ./test.sh  "),
            "{steps}"
        );
        assert!(
            steps.contains("\n  /opt/weir/bin/weir run weir.toml  "),
            "{steps}"
        );
    }

    #[test]
    fn shell_quote_quotes_only_when_needed() {
        assert_eq!(shell_quote("a/b-c.d"), "a/b-c.d");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
