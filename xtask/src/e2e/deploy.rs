//! The service files of contrib/, checked with the tools that read them.
//!
//! - `systemd-unit`: contrib/systemd/netkit.service, with `/usr/local/bin/server`
//!   pointed at the release binary under test (verify checks that every
//!   command exists), passes `systemd-analyze verify` with nothing printed
//!   (it exits 0 on unknown keys and bad values, only warning about them).
//! - `k8s-manifests`: contrib/k8s/*.yaml parse as YAML (python3's `yaml`),
//!   hold the kinds they should, and agree with each other and with the
//!   server: the ConfigMap's `server.toml` passes `server --check-config`,
//!   every listener binds a wildcard address on a declared container port,
//!   the probes and the Service name declared ports, the Service selects the
//!   pods, the mounts hold the files the config and the arguments name, and
//!   the pod runs as the Containerfile's user.
//!
//! The Containerfile itself is not built: this machine has no container
//! engine (docs/deploy.md says so).

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Ctx, require_python_module};
use crate::process::{self, Proc, Stdout};

const UNIT: &str = "contrib/systemd/netkit.service";
const K8S: &str = "contrib/k8s";
const K8S_FILES: [&str; 4] = [
    "configmap.yaml",
    "deployment.yaml",
    "service.yaml",
    "kustomization.yaml",
];
/// Where the unit expects the binary.
const INSTALLED: &str = "/usr/local/bin/server";

/// `systemd-analyze verify` on the unit: see the module docs.
pub(crate) fn systemd_unit(ctx: &mut Ctx) -> anyhow::Result<String> {
    let analyze = process::require("systemd-analyze", "apt-get install systemd")?;
    let unit = std::fs::read_to_string(ctx.root.join(UNIT))
        .with_context(|| format!("cannot read {UNIT}"))?;
    for key in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=",
    ] {
        if !unit.lines().any(|l| l.starts_with(key)) {
            bail!("{UNIT} has no line starting with {key:?}");
        }
    }
    // SIGHUP reloads: a unit that restarts on it would drop every connection instead.
    if unit
        .lines()
        .any(|l| l.starts_with("RestartForceExitStatus=") && l.contains("HUP"))
    {
        bail!("{UNIT} restarts the server on SIGHUP, which reloads it");
    }
    let binary = ctx.bins.server.display().to_string();
    let dir = ctx.dir.path().join("systemd");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("netkit.service");
    std::fs::write(&copy, unit.replace(INSTALLED, &binary))?;
    let mut cmd = Command::new(&analyze);
    cmd.arg("verify").arg(&copy);
    let done = Proc::spawn("systemd-analyze", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(60))?;
    let said = format!(
        "{}{}",
        done.stdout_text(),
        String::from_utf8_lossy(&done.stderr)
    );
    if !done.status.success() || !said.trim().is_empty() {
        bail!(
            "systemd-analyze verify {UNIT} ({}): {}",
            done.status,
            said.trim()
        );
    }
    // The exposure score, for the report (it varies with systemd's version).
    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=yes"]).arg(&copy);
    let security = Proc::spawn("systemd-analyze", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(60))?;
    let score = security
        .stdout_text()
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for netkit.service:")
                .map(|(_, s)| s.trim().to_owned())
        })
        .unwrap_or_else(|| "not reported".to_owned());
    Ok(format!(
        "systemd-analyze verify: clean (ExecStart {binary}); security --offline exposure: {score}"
    ))
}

/// The Kubernetes manifests: see the module docs.
pub(crate) fn k8s_manifests(ctx: &mut Ctx) -> anyhow::Result<String> {
    require_python_module("yaml", "apt-get install python3-yaml")?;
    let python = process::require("python3", "apt-get install python3")?;
    let dir = ctx.root.join(K8S);
    let mut cmd = Command::new(python);
    cmd.current_dir(&dir).arg("-c").arg(
        "import json, sys, yaml\n\
         print(json.dumps({p: list(yaml.safe_load_all(open(p))) for p in sys.argv[1:]}))",
    );
    cmd.args(K8S_FILES);
    let done = Proc::spawn("python3", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(60))?;
    if !done.status.success() {
        bail!("{K8S}: YAML does not parse: {}", done.stderr_tail());
    }
    let files: Value = serde_json::from_str(&done.stdout_text()).context("python's JSON")?;
    let one = |file: &str, kind: &str| -> anyhow::Result<Value> {
        let docs = files[file]
            .as_array()
            .with_context(|| format!("{file}: no documents"))?;
        match docs.as_slice() {
            [doc] if doc["kind"] == kind => Ok(doc.clone()),
            _ => bail!("{file}: expected one {kind}, found {docs:?}"),
        }
    };
    let config_map = one("configmap.yaml", "ConfigMap")?;
    let deployment = one("deployment.yaml", "Deployment")?;
    let service = one("service.yaml", "Service")?;
    let kustomization = one("kustomization.yaml", "Kustomization")?;

    let listed: HashSet<&str> = kustomization["resources"]
        .as_array()
        .context("kustomization: no resources")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let wanted: HashSet<&str> = K8S_FILES
        .iter()
        .copied()
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    if listed != wanted {
        bail!("kustomization lists {listed:?}, expected {wanted:?}");
    }

    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let ports: Vec<(String, u64)> = container["ports"]
        .as_array()
        .context("deployment: no container ports")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["containerPort"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let has_port = |v: &Value| match v {
        Value::String(name) => ports.iter().any(|(n, _)| n == name),
        Value::Number(n) => ports.iter().any(|(_, p)| Some(*p) == n.as_u64()),
        _ => false,
    };

    // The ConfigMap's server.toml: the server accepts it, and it binds what the pod declares.
    let toml = config_map["data"]["server.toml"]
        .as_str()
        .context("configmap: no data.server.toml")?;
    let users_file = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("users_file = "))
        .map(|v| v.trim_matches('"').to_owned())
        .context("configmap: server.toml has no users_file")?;
    let mut bound = Vec::new();
    for line in toml.lines() {
        if let Some(value) = line.trim().strip_prefix("bind = ") {
            let value = value.trim_matches('"');
            let (host, port) = value
                .rsplit_once(':')
                .with_context(|| format!("server.toml: bind {value:?}"))?;
            if host != "0.0.0.0" && host != "[::]" {
                bail!("server.toml binds {value}: a pod must bind 0.0.0.0 or [::]");
            }
            let port: u64 = port.parse()?;
            if !ports.iter().any(|(_, p)| *p == port) {
                bail!("server.toml binds port {port}, which the pod does not declare ({ports:?})");
            }
            bound.push(port);
        }
    }
    let check_dir = ctx.dir.path().join("k8s");
    std::fs::create_dir_all(&check_dir)?;
    let users = check_dir.join("users");
    std::fs::write(&users, "alice:change-me\n")?;
    let config = check_dir.join("server.toml");
    std::fs::write(
        &config,
        toml.replace(&users_file, &users.display().to_string()),
    )?;
    let mut cmd = Command::new(&ctx.bins.server);
    cmd.arg("--check-config").arg(&config);
    let checked = Proc::spawn("server", &mut cmd, Stdio::null(), Stdout::Null)?
        .wait(Duration::from_secs(30))?;
    if !checked.status.success() {
        bail!(
            "server --check-config rejects the ConfigMap's server.toml: {}",
            checked.stderr_tail()
        );
    }

    // Probes and Service ports name declared ports; the Service selects the pods.
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &container[probe];
        let port = if p["tcpSocket"].is_object() {
            &p["tcpSocket"]["port"]
        } else {
            &p["httpGet"]["port"]
        };
        if !has_port(port) {
            bail!("deployment: {probe} probes port {port}, which the pod does not declare");
        }
    }
    for port in service["spec"]["ports"]
        .as_array()
        .context("service: no ports")?
    {
        if !has_port(&port["targetPort"]) {
            bail!(
                "service: targetPort {} is not a pod port",
                port["targetPort"]
            );
        }
    }
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"]
        .as_object()
        .context("service: no selector")?;
    if selector.iter().any(|(k, v)| labels[k] != *v) || selector.is_empty() {
        bail!("service selector {selector:?} does not select the pods ({labels})");
    }
    if deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().any(|(k, v)| labels[k] != *v))
    {
        bail!("deployment: spec.selector does not match its own pods");
    }

    // The mounts hold the files the arguments and server.toml name.
    let args: Vec<&str> = container["args"]
        .as_array()
        .context("deployment: no args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args
        .windows(2)
        .find_map(|w| (w.first() == Some(&"--config")).then(|| w.get(1).copied()))
        .flatten()
        .context("deployment: no --config argument")?;
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .context("deployment: no volumeMounts")?
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for wanted in [config_path, users_file.as_str()] {
        if !mounts
            .iter()
            .any(|m| wanted == *m || wanted.starts_with(&format!("{m}/")))
        {
            bail!("deployment: nothing is mounted at {wanted} ({mounts:?})");
        }
    }

    // The pod runs as the image's user.
    let containerfile = std::fs::read_to_string(ctx.root.join("Containerfile"))
        .context("cannot read Containerfile")?;
    let image_user = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .and_then(|u| u.split(':').next())
        .and_then(|u| u.trim().parse::<u64>().ok())
        .context("Containerfile: no numeric USER")?;
    let run_as = pod["securityContext"]["runAsUser"].as_u64();
    if run_as != Some(image_user) || pod["securityContext"]["runAsNonRoot"] != true {
        bail!("deployment: runAsUser {run_as:?} / runAsNonRoot, image USER {image_user}");
    }
    Ok(format!(
        "{} files parse; server --check-config accepts the ConfigMap; binds {bound:?} = pod ports {ports:?}; \
         probes, Service, mounts and user {image_user} agree",
        K8S_FILES.len()
    ))
}
