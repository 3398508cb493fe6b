//! `kiln completion bash|zsh|fish|…` (shell completions on stdout) and `kiln man --out DIR`
//! (man pages for `kiln` and every subcommand), both generated from the same clap definition as
//! `--help`, so they never drift from it.

use std::path::PathBuf;

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct CompletionArgs {
    /// The shell, e.g. `kiln completion bash > /etc/bash_completion.d/kiln`.
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Directory for `kiln.1` and `kiln-<command>.1` (e.g. /usr/local/share/man/man1).
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

pub fn completion(mut command: clap::Command, args: CompletionArgs) {
    clap_complete::generate(args.shell, &mut command, "kiln", &mut std::io::stdout());
}

/// Writes one page for `kiln` and one per subcommand; returns the files written.
pub fn man(command: clap::Command, args: &ManArgs) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut written = Vec::new();
    let mut render = |cmd: clap::Command, name: String| -> anyhow::Result<()> {
        let path = args.out.join(format!("{name}.1"));
        let mut page = Vec::new();
        // clap takes a command's name as &'static str; this runs once per page of a short-lived process.
        let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
        clap_mangen::Man::new(cmd.name(static_name)).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let command = command.name("kiln");
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect::<Vec<_>>() {
        let name = format!("kiln-{}", sub.get_name());
        render(sub, name)?;
    }
    render(command, "kiln".to_owned())?;
    Ok(written)
}
