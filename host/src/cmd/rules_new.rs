//! `mailcall rules new`: a ready-to-build rule project in Rust, JavaScript,
//! Python or C, with the WIT contract, a build script, a test message and the
//! settings to try it with `mailcall rules test`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The contract every project carries a copy of.
const WIT: &str = include_str!("../../../wit/rule.wit");

/// The files every project has, whatever its language.
const COMMON: [(&str, &str); 3] = [
    ("test.eml", include_str!("../../templates/test.eml")),
    (
        "mailcall.toml",
        include_str!("../../templates/mailcall.toml"),
    ),
    ("README.md", include_str!("../../templates/README.md")),
];

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Language {
    Rust,
    Js,
    Python,
    C,
}

impl Language {
    fn name(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
            Language::Python => "Python",
            Language::C => "C",
        }
    }

    /// The language's own files: path, content, executable.
    fn files(self) -> &'static [(&'static str, &'static str, bool)] {
        match self {
            Language::Rust => &[
                (
                    "Cargo.toml",
                    include_str!("../../templates/rust/Cargo.toml"),
                    false,
                ),
                (
                    "src/lib.rs",
                    include_str!("../../templates/rust/src/lib.rs"),
                    false,
                ),
                (
                    "build.sh",
                    include_str!("../../templates/rust/build.sh"),
                    true,
                ),
                (".gitignore", "/target\n*.wasm\n", false),
            ],
            Language::Js => &[
                ("rule.js", include_str!("../../templates/js/rule.js"), false),
                (
                    "build.sh",
                    include_str!("../../templates/js/build.sh"),
                    true,
                ),
                (".gitignore", "*.wasm\n", false),
            ],
            Language::Python => &[
                (
                    "app.py",
                    include_str!("../../templates/python/app.py"),
                    false,
                ),
                (
                    "build.sh",
                    include_str!("../../templates/python/build.sh"),
                    true,
                ),
                (".gitignore", "*.wasm\n__pycache__/\nwit_world/\n", false),
            ],
            Language::C => &[
                ("rule.c", include_str!("../../templates/c/rule.c"), false),
                ("build.sh", include_str!("../../templates/c/build.sh"), true),
                (".gitignore", "*.wasm\nbindings/\n", false),
            ],
        }
    }

    /// Limits to try the rule with: JavaScript and Python runtimes need
    /// more memory and a few milliseconds per fresh instance; C needs no
    /// more than Rust.
    fn limits(self) -> (u32, u32) {
        match self {
            Language::Rust | Language::C => (16, 10),
            Language::Js | Language::Python => (64, 200),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rule's name: lower-case letters, digits and hyphens.
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: Language,
    /// Where to create the project (default: a folder named after the rule).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let name = &args.name;
    let valid = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-');
    if !valid {
        bail!("{name:?} is not a rule name: use lower-case letters, digits and hyphens, starting with a letter");
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    let (memory, deadline) = args.lang.limits();
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate_name}}", &name.replace('-', "_"))
            .replace("{{language}}", args.lang.name())
            .replace("{{memory_limit_mib}}", &memory.to_string())
            .replace("{{deadline_ms}}", &deadline.to_string())
    };
    write(&dir, "wit/rule.wit", WIT, false)?;
    for (path, text) in COMMON {
        write(&dir, path, &fill(text), false)?;
    }
    for (path, text, executable) in args.lang.files() {
        write(&dir, path, &fill(text), *executable)?;
    }
    println!(
        "created {} ({} rule {name}); next: cd {} && ./build.sh",
        dir.display(),
        args.lang.name(),
        dir.display()
    );
    Ok(())
}

fn write(dir: &Path, path: &str, text: &str, executable: bool) -> anyhow::Result<()> {
    let path = dir.join(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
