//! Environment variables: each names what it sets, and no name means one
//! thing to one command and another to the next. The names that were renamed
//! for that still work, for their own command only, with a warning.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// A variable renamed because its old name was too generic; the old name
/// still sets the same flag of the same command (and nothing else).
struct Renamed {
    /// The subcommand path, e.g. `["cert", "new"]`.
    command: &'static [&'static str],
    /// The argument's id (its field name).
    arg: &'static str,
    /// The old variable.
    old: &'static str,
}

/// Renamed variables whose old name still works. `emulate`'s old
/// `MSGRAPH_WEBHOOKS_ADDR` and `MSGRAPH_WEBHOOKS_TENANT_ID` are not here:
/// those names belong to `listen` (and the receiving commands), and reading
/// them in `emulate` too was the collision.
const RENAMED: &[Renamed] = &[
    renamed(&["cert", "new"], "out", "MSGRAPH_WEBHOOKS_OUT"),
    renamed(&["cert", "new"], "cn", "MSGRAPH_WEBHOOKS_CN"),
    renamed(&["cert", "new"], "bits", "MSGRAPH_WEBHOOKS_BITS"),
    renamed(&["cert", "new"], "days", "MSGRAPH_WEBHOOKS_DAYS"),
    renamed(&["doctor"], "json", "MSGRAPH_WEBHOOKS_JSON"),
    renamed(&["doctor"], "insecure", "MSGRAPH_WEBHOOKS_INSECURE"),
    renamed(&["subscribe"], "port", "MSGRAPH_WEBHOOKS_PORT"),
    renamed(
        &["emulate"],
        "app_permissions",
        "MSGRAPH_WEBHOOKS_APP_PERMISSIONS",
    ),
    renamed(&["emulate"], "time_scale", "MSGRAPH_WEBHOOKS_TIME_SCALE"),
    renamed(
        &["emulate"],
        "timeout_scale",
        "MSGRAPH_WEBHOOKS_TIMEOUT_SCALE",
    ),
    renamed(
        &["emulate"],
        "token_version",
        "MSGRAPH_WEBHOOKS_TOKEN_VERSION",
    ),
    renamed(
        &["emulate"],
        "misconfigured_tenant",
        "MSGRAPH_WEBHOOKS_MISCONFIGURED_TENANT",
    ),
    renamed(&["emulate"], "allow_http", "MSGRAPH_WEBHOOKS_ALLOW_HTTP"),
    renamed(&["emulate"], "drive_file", "MSGRAPH_WEBHOOKS_DRIVE_FILE"),
    renamed(
        &["emulate"],
        "copilot_unlicensed_user",
        "MSGRAPH_WEBHOOKS_COPILOT_UNLICENSED_USER",
    ),
    renamed(
        &["emulate"],
        "no_copilot_tenant_license",
        "MSGRAPH_WEBHOOKS_NO_COPILOT_TENANT_LICENSE",
    ),
];

const fn renamed(
    command: &'static [&'static str],
    arg: &'static str,
    old: &'static str,
) -> Renamed {
    Renamed { command, arg, old }
}

/// An old name in use: set, while its new name is not.
pub(crate) struct InUse {
    renamed: &'static Renamed,
    new: String,
}

/// Makes each renamed flag read its old variable where only that one is set.
/// Pass the returned list to [`warn_deprecated`] once the command line is
/// parsed and logging is up.
pub(crate) fn accept_deprecated_names(mut command: Command) -> (Command, Vec<InUse>) {
    let mut in_use = Vec::new();
    for renamed in RENAMED {
        if std::env::var_os(renamed.old).is_none() {
            continue;
        }
        command = mut_arg_at(command, renamed.command, renamed.arg, |arg| {
            let Some(new) = arg.get_env().map(|new| new.to_string_lossy().into_owned()) else {
                return arg;
            };
            if std::env::var_os(&new).is_some() {
                return arg;
            }
            in_use.push(InUse { renamed, new });
            arg.env(renamed.old)
        });
    }
    (command, in_use)
}

/// Logs one line for each old name that set a flag of the command that runs.
pub(crate) fn warn_deprecated(matches: &ArgMatches, in_use: &[InUse]) {
    for InUse { renamed, new } in in_use {
        let mut matches = Some(matches);
        for name in renamed.command {
            matches = matches.and_then(|m| m.subcommand_matches(name));
        }
        if matches.and_then(|m| m.value_source(renamed.arg)) == Some(ValueSource::EnvVariable) {
            tracing::warn!(
                "{} is deprecated for `{}`: set {new} instead",
                renamed.old,
                renamed.command.join(" ")
            );
        }
    }
}

fn mut_arg_at<F>(command: Command, path: &[&str], arg: &str, f: F) -> Command
where
    F: FnOnce(clap::Arg) -> clap::Arg,
{
    match path.split_first() {
        None => command.mut_arg(arg, f),
        Some((name, rest)) => command.mut_subcommand(name, |sub| mut_arg_at(sub, rest, arg, f)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory as _;

    use super::*;
    use crate::Cli;

    /// Variables several commands read under one flag and default, each
    /// with help of its own because each uses the one value its own way
    /// (the clientState a receiver checks, `doctor` probes with and
    /// `inspect` compares; the tenant tokens come from; the shutdown grace),
    /// and the commands that may. A command not listed here that reads one
    /// of them with other help is a collision.
    const SAME_MEANING_OWN_HELP: &[(&str, &[&str])] = &[
        (
            "MSGRAPH_WEBHOOKS_CLIENT_STATE",
            &["listen", "inspect", "doctor"],
        ),
        (
            "MSGRAPH_WEBHOOKS_TENANT_ID",
            &["listen", "work", "inspect", "subscribe", "delta"],
        ),
        (
            "MSGRAPH_WEBHOOKS_DRAIN_SECS",
            &["listen", "work", "subscribe"],
        ),
    ];

    fn may_have_own_help(env: &str, uses: &[Use]) -> bool {
        SAME_MEANING_OWN_HELP
            .iter()
            .find(|(name, _)| *name == env)
            .is_some_and(|(_, commands)| {
                uses.iter().all(|u| commands.contains(&u.command.as_str()))
            })
    }

    /// What one command's flag declares about a variable.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    struct Use {
        command: String,
        flag: String,
        help: String,
        defaults: Vec<String>,
    }

    fn uses(command: &Command, path: &str, out: &mut BTreeMap<String, Vec<Use>>) {
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            out.entry(env.to_string_lossy().into_owned())
                .or_default()
                .push(Use {
                    command: path.to_owned(),
                    flag: arg.get_long().unwrap_or(arg.get_id().as_str()).to_owned(),
                    help: arg.get_help().map(ToString::to_string).unwrap_or_default(),
                    defaults: arg
                        .get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect(),
                });
        }
        for sub in command.get_subcommands() {
            uses(sub, format!("{path} {}", sub.get_name()).trim(), out);
        }
    }

    fn all_uses() -> BTreeMap<String, Vec<Use>> {
        let mut command = Cli::command();
        // Propagates the global flags, as parsing does.
        command.build();
        let mut out = BTreeMap::new();
        uses(&command, "", &mut out);
        out
    }

    fn distinct<T: Ord>(uses: &[Use], field: impl Fn(&Use) -> T) -> BTreeSet<T> {
        uses.iter().map(field).collect()
    }

    #[test]
    fn no_variable_is_read_by_two_commands_for_different_things() {
        let mut collisions = Vec::new();
        for (env, uses) in all_uses() {
            let flags = distinct(&uses, |u| u.flag.clone());
            let defaults = distinct(&uses, |u| u.defaults.clone());
            let helps = distinct(&uses, |u| u.help.clone());
            if flags.len() > 1
                || defaults.len() > 1
                || (helps.len() > 1 && !may_have_own_help(&env, &uses))
            {
                collisions.push(format!("{env}: {uses:#?}"));
            }
        }
        assert!(collisions.is_empty(), "{}", collisions.join("\n"));
    }

    #[test]
    fn every_variable_is_one_of_ours() {
        for env in all_uses().keys() {
            assert!(env.starts_with("MSGRAPH_WEBHOOKS_"), "{env}");
        }
    }

    #[test]
    fn every_old_name_belongs_to_a_flag_that_now_reads_another_and_is_free() {
        let uses = all_uses();
        for renamed in RENAMED {
            let command = renamed.command.join(" ");
            let mut found = Cli::command();
            for name in renamed.command {
                found = found.find_subcommand(name).expect(&command).clone();
            }
            let arg = found
                .get_arguments()
                .find(|a| a.get_id() == renamed.arg)
                .unwrap_or_else(|| panic!("{command} has no {}", renamed.arg));
            let new = arg.get_env().expect("the flag reads a variable");
            assert_ne!(new, renamed.old, "{command} {}", renamed.arg);
            // Aliasing a name some command still reads would bring the
            // collision back.
            assert!(!uses.contains_key(renamed.old), "{} is in use", renamed.old);
        }
    }
}
