//! `--accounts FILE`, shared by `region`, `coordinator` and `dev`: the accounts file (TOML; see
//! [`amisim_core::accounts`] for its shape). With it every call authenticates with
//! `authorization: Bearer <token>` and organization / OU launch permissions cover the accounts
//! it places in them; the internal `Region` and `Audit` services take only the `[operator]`
//! token, which the coordinator sends to the nodes (ADR 0009). Without it the caller is
//! `x-amisim-account` (default `123456789012`) and nothing is checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use amisim_core::accounts::AccountsFile;
use amisim_core::Accounts;
use anyhow::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct AccountsArgs {
    /// Accounts file (TOML): `[operator]` with the `token` of the internal Region and Audit
    /// services (required), `[[account]]` entries with `id`, `token` and optional
    /// `organization` / `ou`, `[[organization]]` entries with `id` and `management_account`,
    /// optional `[[organizational_unit]]` entries (`id`, `organization`, `parent`). With it,
    /// every call must carry `authorization: Bearer <token>` and `x-amisim-account` is ignored;
    /// Region and Audit calls need the operator token, which the coordinator sends. Give the
    /// same file to every region node and the coordinator.
    #[arg(long, env = "AMISIM_ACCOUNTS", value_name = "FILE")]
    pub accounts: Option<PathBuf>,
}

impl AccountsArgs {
    /// The checked accounts file, if one was given.
    pub fn load(&self) -> anyhow::Result<Option<Arc<Accounts>>> {
        self.accounts.as_deref().map(load).transpose()
    }
}

/// Reads, decodes and checks an accounts file; errors name the file and the entry.
pub fn load(path: &Path) -> anyhow::Result<Arc<Accounts>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --accounts {}", path.display()))?;
    let file: AccountsFile =
        toml::from_str(&text).with_context(|| format!("invalid --accounts {}", path.display()))?;
    let accounts = Accounts::from_file(file)
        .with_context(|| format!("invalid --accounts {}", path.display()))?;
    Ok(Arc::new(accounts))
}

/// The stdout line that says how callers authenticate.
pub fn describe(accounts: Option<&Accounts>) -> String {
    match accounts {
        None => "authentication: x-amisim-account (no --accounts)".to_string(),
        Some(a) => format!(
            "authentication: bearer tokens of {} account(s), {} in an organization; \
             Region and Audit need the operator token",
            a.ids().count(),
            a.membership().accounts().count()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_loads_and_bad_ones_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("amisim-accounts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            r#"
[operator]
token = "tok-op"

[[organization]]
id = "o-abcde12345"
management_account = "999988887777"

[[account]]
id = "111122223333"
token = "tok-a"
organization = "o-abcde12345"
ou = "ou-ab12-abcdefgh"

[[account]]
id = "444455556666"
token = "tok-b"
"#,
        )
        .unwrap();
        let a = load(&good).unwrap();
        assert_eq!(a.authenticate("tok-b"), Some("444455556666"));
        assert!(a.membership().in_ou(
            "111122223333",
            "arn:aws:organizations::999988887777:ou/o-abcde12345/ou-ab12-abcdefgh"
        ));
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[[account]]\nid = \"1\"\ntoken = \"x\"\n").unwrap();
        let e = format!("{:#}", load(&bad).unwrap_err());
        assert!(e.contains("bad.toml") && e.contains("12 digits"), "{e}");
        std::fs::write(&bad, "[[acount]]\nid = \"1\"\n").unwrap();
        assert!(load(&bad).is_err(), "unknown tables are refused");
        std::fs::write(&bad, "[[account]]\nid = \"111122223333\"\ntoken = \"x\"\n").unwrap();
        let e = format!("{:#}", load(&bad).unwrap_err());
        assert!(
            e.contains("[operator]"),
            "the operator token is required: {e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
