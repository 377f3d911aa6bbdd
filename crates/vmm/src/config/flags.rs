//! `nightshift run`'s VM flags, laid over a JSON config file.
//!
//! The flags are [`VmConfig`]'s own fields: `VmConfig` and [`WorkConfig`]
//! derive `clap::Args`, so each option is declared once, on its field: its name
//! (the field's, or `long = ...`), its doc (the JSON field's and the flag's
//! help), its type and parser (`FromStr`), and its default (`VmConfig`'s
//! `Default`, which serde uses for a field a file leaves out and which clap
//! shows in `--help`). Adding an option is adding a field.
//!
//! How flags and a file combine is stated once, in [`VmFlags::over`]: a flag
//! given on the command line replaces the file's value, except the repeatable
//! list flags (`--disk`, `--net`, `--hide-cpu-feature`, `--pin`), which add to
//! the file's (a `--pin` for a vCPU the file pins replaces that vCPU's entry).
//! A flag not given leaves the file's value, whatever its default. Without a
//! file the flags, with their defaults, are the whole config. Either way
//! [`VmConfig::validate`] then checks it, as it checks a file alone.
//!
//! Why this design, and not the two obvious ones:
//! - Flags on a struct of their own, merged into the config by a serde overlay
//!   of the `Option`s given: that struct would declare every option a second
//!   time (name, doc, type, default), which is the drift this module removes.
//! - clap's derived `update_from_arg_matches` on the file's `VmConfig`: it
//!   sets every field whose arg is *present*, and an arg with a default is
//!   always present (every non-`Option` field needs one, and a bool flag's is
//!   `false`), so it would reset the file's `vcpus`, or its `rng: true`, to the
//!   defaults of flags nobody gave; and it replaces lists instead of adding.
//!
//! So clap parses the flags into a whole `VmConfig` and this module records
//! which args came from the command line (`ArgMatches::value_source`). Those
//! fields are taken from serde's JSON view of the flags' config, laid over the
//! JSON view of the file's, and the result is deserialized once. That needs no
//! code per field, present or future: an arg's id is its field's name, which is
//! its JSON key (a test checks every flag has one).

use std::collections::BTreeSet;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::VmConfig;
#[cfg(doc)]
use super::WorkConfig;

/// The VM flags of one command line: the config clap parsed from them (with
/// defaults for those not given) and which of them were given.
#[derive(Clone, Debug)]
pub struct VmFlags {
    parsed: VmConfig,
    given: BTreeSet<String>,
}

/// The flags' and the file's configs could not be combined (not expected:
/// both are `VmConfig`s, so their JSON views read back).
#[derive(Debug, thiserror::Error)]
#[error("cannot lay the command line's flags over the config file")]
pub struct FlagsError(#[from] serde_json::Error);

impl VmFlags {
    /// The VM the command line describes: `file` (a JSON config's) with the
    /// flags given laid over it, or without a file the flags alone.
    pub fn over(&self, file: Option<VmConfig>) -> Result<VmConfig, FlagsError> {
        let Some(file) = file else {
            // Read back through the same JSON view, so that the flags alone
            // mean what they mean over a file (`--pin 0=0 --pin 0=1` pins to 1).
            return Ok(VmConfig::deserialize(serde_json::to_value(&self.parsed)?)?);
        };
        let mut config = object(&file)?;
        overlay(&mut config, object(&self.parsed)?, &self.given);
        Ok(VmConfig::deserialize(Value::Object(config))?)
    }
}

/// A config's JSON view: every field, with its key.
fn object(config: &VmConfig) -> Result<Map<String, Value>, FlagsError> {
    Ok(serde_json::from_value(serde_json::to_value(config)?)?)
}

/// Lays the `given` fields of `flags` over `file`, at any depth (a flattened
/// group of flags, `work`, is an object of its own).
fn overlay(file: &mut Map<String, Value>, flags: Map<String, Value>, given: &BTreeSet<String>) {
    for (key, flag) in flags {
        let Some(slot) = file.get_mut(&key) else {
            continue;
        };
        if given.contains(&key) {
            add_or_replace(slot, flag);
        } else if let (Value::Object(group), Value::Object(flags)) = (slot, flag) {
            overlay(group, flags, given);
        }
    }
}

/// The one merge rule: a list adds to the file's, and so does a map (`pin`,
/// entry by entry: the flag's entry for a key replaces the file's); any other
/// value replaces the file's.
fn add_or_replace(slot: &mut Value, flag: Value) {
    match (slot, flag) {
        (Value::Array(file), Value::Array(flag)) => file.extend(flag),
        (Value::Object(file), Value::Object(flag)) => file.extend(flag),
        (slot, flag) => *slot = flag,
    }
}

/// The ids of the VM flags, which are their fields' names.
fn arg_ids() -> Vec<String> {
    VmConfig::augment_args(Command::new("vm"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// The VM flags that `matches` has from the command line, not from a default.
fn given(matches: &ArgMatches) -> impl Iterator<Item = String> + '_ {
    arg_ids()
        .into_iter()
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
}

impl FromArgMatches for VmFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(VmFlags {
            parsed: VmConfig::from_arg_matches(matches)?,
            given: given(matches).collect(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.parsed.update_from_arg_matches(matches)?;
        self.given.extend(given(matches));
        Ok(())
    }
}

impl Args for VmFlags {
    fn augment_args(cmd: Command) -> Command {
        VmConfig::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        VmConfig::augment_args_for_update(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_pin, ConsoleIn, CpuFeature, NetConfig};

    fn command() -> Command {
        VmFlags::augment_args(Command::new("run").no_binary_name(true))
    }

    fn flags(args: &[&str]) -> VmFlags {
        let matches = command().try_get_matches_from(args).unwrap();
        VmFlags::from_arg_matches(&matches).unwrap()
    }

    fn file(json: &str) -> Option<VmConfig> {
        Some(serde_json::from_str(json).unwrap())
    }

    /// What `--help` shows as each flag's default is what a VM gets without
    /// the flag: `VmConfig::default()`, except the console's input, which on
    /// the command line alone is the terminal.
    #[test]
    fn without_a_file_or_flags_the_vm_is_the_default_the_help_shows() {
        let expected = VmConfig {
            console_input: ConsoleIn::Stdin,
            ..VmConfig::default()
        };
        assert_eq!(flags(&[]).over(None).unwrap(), expected);
        let help = command().render_long_help().to_string();
        for shown in [
            "--vcpus <VCPUS>\n",
            "[default: 2]",
            "--mem <MIB>",
            "[default: 256]",
            "[default: idle]",
            "[default: enforce]",
            "[default: kernel]",
            "[default: stdin]",
            "[default: 64]",
            "--disk <PATH[,ro][,xts=N][,scrub=N]>",
            "--hide-cpu-feature <FEATURE>",
            "Guest memory in MiB",
        ] {
            assert!(help.contains(shown), "{shown:?} not in\n{help}");
        }
    }

    #[test]
    fn a_file_value_stays_when_its_flag_is_absent() {
        let base = file(
            r#"{"vcpus":4,"mem_mib":512,"cmdline":"workload=idle","work":{"policy":"workers","budget_us":7}}"#,
        );
        let c = flags(&["--workers", "3"]).over(base.clone()).unwrap();
        assert_eq!(
            (c.vcpus, c.mem_mib, c.cmdline.as_str()),
            (4, 512, "workload=idle")
        );
        assert_eq!(
            (c.work.policy, c.work.budget_us, c.work.workers),
            (idlework::Policy::Workers, 7, 3)
        );
        // Nothing given: the file as it is (its console input too: none).
        assert_eq!(flags(&[]).over(base.clone()).unwrap(), base.unwrap());
    }

    #[test]
    fn a_flag_given_replaces_the_file_value() {
        let base = file(
            r#"{"vcpus":4,"kernel":"a.elf","work":{"policy":"workers","cpu_cap":2},"halt_poll_ns":5}"#,
        );
        let c = flags(&[
            "--vcpus",
            "1",
            "--kernel",
            "b.elf",
            "--policy",
            "inline",
            "--cpu-cap",
            "0",
            "--halt-poll-ns",
            "0",
            "--console-in",
            "stdin",
        ])
        .over(base)
        .unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.kernel.as_deref(), Some("b.elf".as_ref()));
        assert_eq!(
            (c.work.policy, c.work.cpu_cap),
            (idlework::Policy::Inline, Some(0))
        );
        assert_eq!(
            (c.halt_poll_ns, c.console_input),
            (Some(0), ConsoleIn::Stdin)
        );
        // A flag given with its default value still replaces the file's.
        let c = flags(&["--vcpus", "2"])
            .over(file(r#"{"vcpus":4}"#))
            .unwrap();
        assert_eq!(c.vcpus, 2);
    }

    #[test]
    fn a_bool_flag_absent_does_not_clear_the_files_true() {
        let base = file(r#"{"rng":true,"overwrite":true,"expose_mwait":true}"#);
        let c = flags(&["--vcpus", "1"]).over(base).unwrap();
        assert!(c.rng && c.overwrite && c.expose_mwait);
        let c = flags(&["--rng"]).over(file("{}")).unwrap();
        assert!(c.rng && !c.overwrite && !c.expose_mwait);
    }

    #[test]
    fn list_flags_add_to_the_files_lists() {
        let base = file(
            r#"{"vcpus":3,"disks":[{"path":"a.img"}],"nets":[{"tap":"t0"}],
                "pin":{"0":"0","2":"0"},"hide_cpu_features":["xsave"]}"#,
        );
        let c = flags(&[
            "--disk",
            "b.img,ro",
            "--net",
            "tap=t1",
            "--pin",
            "0=1",
            "--pin",
            "1=1",
            "--hide-cpu-feature",
            "cx16",
        ])
        .over(base)
        .unwrap();
        let disks: Vec<_> = c
            .disks
            .iter()
            .map(|d| (d.path.to_str(), d.read_only))
            .collect();
        assert_eq!(disks, [(Some("a.img"), false), (Some("b.img"), true)]);
        let taps: Vec<_> = c.nets.iter().map(|n: &NetConfig| n.tap.as_str()).collect();
        assert_eq!(taps, ["t0", "t1"]);
        let pins: Vec<_> = c.pin.iter().map(|(v, l)| (*v, l.to_string())).collect();
        assert_eq!(pins, [(0, "1".into()), (1, "1".into()), (2, "0".into())]);
        assert_eq!(c.hide_cpu_features, [CpuFeature::Xsave, CpuFeature::Cx16]);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_vcpu_pinned_twice_on_the_command_line_gets_the_last_pin() {
        for base in [None, file("{}")] {
            let c = flags(&["--pin", "0=0", "--pin", "0=1"]).over(base).unwrap();
            assert_eq!(c.pin, [parse_pin("0=1").unwrap()]);
        }
    }

    /// Flags find their field by name: every flag's id must be a key of the
    /// JSON config (at the top, or in a flattened group such as `work`).
    #[test]
    fn every_flag_is_a_json_config_field() {
        let json = object(&VmConfig::default()).unwrap();
        let work = json["work"].as_object().unwrap();
        for id in arg_ids() {
            assert!(
                json.contains_key(&id) || work.contains_key(&id),
                "flag {id} has no JSON field of that name"
            );
        }
    }
}
