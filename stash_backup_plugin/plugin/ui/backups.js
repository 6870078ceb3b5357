// stash-backup's pages inside Stash's UI: a Backups page (its own route and an entry
// in Settings > Tools), a navbar badge when the newest verified backup is older than
// the interval, and the automatic backup when that setting is on.
//
// Plain ES2017 on Stash's window.PluginApi (React, react-bootstrap, react-router,
// Apollo: the same libraries and Bootstrap theme as Stash's own pages); no build step,
// nothing loaded from any host but the Stash server. Everything the page shows comes
// from the plugin's "status" operation (runPluginOperation), because a plugin task
// that fails still ends FINISHED in Stash's job queue.
(function () {
  "use strict";

  const api = window.PluginApi;
  if (!api) return;
  const React = api.React;
  const h = React.createElement;
  const { Alert, Badge, Button, Card, ProgressBar, Spinner, Table } = api.libraries.Bootstrap;
  const { Link } = api.libraries.ReactRouterDOM;
  const gql = api.libraries.Apollo.gql;

  // Our plugin ID is our manifest's file name, chosen at install time: read it from
  // the URL Stash loaded this script from (/plugin/<id>/javascript).
  const script = document.currentScript && document.currentScript.src;
  const idMatch = script ? /\/plugin\/([^/]+)\/javascript/.exec(new URL(script).pathname) : null;
  if (!idMatch) {
    console.error("stash-backup: cannot tell its plugin ID from", script);
    return;
  }
  const pluginId = decodeURIComponent(idMatch[1]);
  const pagePath = "/plugins/" + encodeURIComponent(pluginId);

  const STATUS_REFRESH_MS = 5 * 60 * 1000;
  const JOB_POLL_MS = 1000;
  const TITLES = {
    download: "Back up now",
    verify: "Verify",
    drill: "Restore drill",
    retention: "Apply retention",
    offsite: "Copy off-site",
  };
  const JOB_NAMES = {
    backup: "Backup on the server", download: "Backup", verify: "Verify",
    retention: "Retention", offsite: "Off-site copy", drill: "Restore drill",
  };
  JOB_NAMES["check-live"] = "Live database check";

  const STATUS = gql`
    mutation StashBackupStatus($id: ID!, $args: Map) { runPluginOperation(plugin_id: $id, args: $args) }`;
  const RUN = gql`
    mutation StashBackupRun($id: ID!, $args: Map, $description: String) {
      runPluginTask(plugin_id: $id, args_map: $args, description: $description)
    }`;
  const JOB = gql`
    query StashBackupJob($id: ID!) { findJob(input: { id: $id }) { id status progress error } }`;

  function client() {
    return api.utils.StashService.getClient();
  }

  // --- one status for the whole tab: the badge and the page share it ---------------
  const store = { status: null, error: null, at: 0, pending: null, listeners: new Set() };

  function publish() {
    store.listeners.forEach((listener) => listener({ status: store.status, error: store.error }));
  }

  function refreshStatus(autorun) {
    if (store.pending) return store.pending;
    store.pending = client()
      .mutate({ mutation: STATUS, variables: { id: pluginId, args: { mode: "status", autorun: !!autorun } } })
      .then((result) => {
        store.status = result.data.runPluginOperation;
        store.error = null;
      })
      .catch((error) => {
        store.error = error.message || String(error);
      })
      .then(() => {
        store.at = Date.now();
        store.pending = null;
        publish();
        return store.status;
      });
    return store.pending;
  }

  function useStatus(autorun) {
    const [state, setState] = React.useState({ status: store.status, error: store.error });
    React.useEffect(() => {
      store.listeners.add(setState);
      if (!store.at || Date.now() - store.at > STATUS_REFRESH_MS) refreshStatus(autorun);
      const timer = setInterval(() => refreshStatus(autorun), STATUS_REFRESH_MS);
      return () => {
        store.listeners.delete(setState);
        clearInterval(timer);
      };
    }, []);
    return state;
  }

  // --- formatting -------------------------------------------------------------------
  function size(bytes) {
    if (bytes === null || bytes === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const steps = [[86400, "d"], [3600, "h"], [60, "min"]];
    for (const [unit, name] of steps) {
      if (seconds >= unit) return Math.floor(seconds / unit) + " " + name;
    }
    return Math.max(0, Math.floor(seconds)) + " s";
  }

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString();
  }

  // --- the navbar badge -------------------------------------------------------------
  // The badge's forms, widest first. From 1200 px Stash's navbar is one row of fixed
  // height: what does not fit falls off its edge. Below, it wraps to a second row, which
  // covers the page (Stash pads the page by one row). So the badge takes the widest form
  // that keeps the navbar in one row inside its box, and no room at all when even "!"
  // would push Stash's own controls (Help, Log out) out: they come first.
  const BADGE_FORMS = ["full", "compact", "none"];

  function navbarCrowded(element) {
    const nav = element && element.closest("nav");
    if (!nav) return false;
    // The phone menu, once opened, is a row of its own: not a wrap.
    const rows = Array.from(nav.children)
      .filter((child) => !child.classList.contains("navbar-collapse") && child.getClientRects().length)
      .map((child) => child.getBoundingClientRect());
    const wrapped = rows.length > 1 && Math.max(...rows.map((r) => r.top)) >= Math.min(...rows.map((r) => r.bottom));
    return wrapped || nav.scrollWidth > nav.clientWidth;
  }

  // Measured after each render, before the browser paints: one form narrower while the
  // navbar is crowded. A new width, page (the New button comes and goes) or text starts
  // again from the widest.
  function useFittingForm(ref, text) {
    const [width, setWidth] = React.useState(window.innerWidth);
    React.useEffect(() => {
      const resized = () => setWidth(window.innerWidth);
      window.addEventListener("resize", resized);
      return () => window.removeEventListener("resize", resized);
    }, []);
    const key = [text, width, window.location.pathname].join("|");
    const [fit, setFit] = React.useState({ key: key, form: 0 });
    const form = fit.key === key ? fit.form : 0;
    React.useLayoutEffect(() => {
      if (form < BADGE_FORMS.length - 1 && navbarCrowded(ref.current)) setFit({ key: key, form: form + 1 });
    });
    return BADGE_FORMS[form];
  }

  function StaleBadge() {
    // Every page view asks with autorun: the plugin queues the automatic backup
    // when that setting is on and the backup is stale (once, whatever the tabs).
    const { status } = useStatus(true);
    const ref = React.useRef(null);
    const stale = !!(status && status.stale);
    const text = !stale ? "" : status.last_verified ? "Backup " + age(status.last_verified_age_seconds) + " old" : "No backup";
    const form = useFittingForm(ref, text);
    if (!stale || form === "none") return null;
    const title = status.last_verified
      ? "The newest verified backup is " + age(status.last_verified_age_seconds) + " old (interval " + status.interval + ")"
      : "There is no verified backup yet";
    const compact = form === "compact";
    return h(
      "span",
      // Not "nav-utility": Stash hides those from the phone navbar, and this must show.
      { ref: ref, className: "stash-backup-nav" + (compact ? " stash-backup-nav-compact" : "") },
      h(Link, { to: pagePath, title: title, "aria-label": title, "data-testid": "stash-backup-badge", className: "d-flex" },
        h(Button, { className: "minimal d-flex align-items-center h-100" },
          h(Badge, { variant: "danger", pill: true }, compact ? "!" : text)))
    );
  }

  // An after-patch gets the component's arguments (props, and React's second
  // argument) and then the rendered result: the result is always the last one.
  function lastOf(args) {
    return args[args.length - 1];
  }

  api.patch.after("MainNavBar.UtilityItems", function () {
    return h(React.Fragment, null, h(StaleBadge), lastOf(arguments));
  });

  // --- Settings > Tools entry ---------------------------------------------------------
  function hasSceneTools(children) {
    return React.Children.toArray(children).some((child) => {
      const heading = child && child.props && child.props.heading;
      return heading && heading.props && heading.props.to === "/sceneDuplicateChecker";
    });
  }

  api.patch.after("SettingsToolsSection", function (props) {
    const result = lastOf(arguments);
    if (!hasSceneTools(props.children)) return result;
    const Setting = api.components.Setting;
    const button = h(Link, { to: pagePath }, h(Button, null, "Backups"));
    const entry = Setting ? h(Setting, { heading: button, subHeading: "Verified backups of this Stash: status, run, verify" })
      : h("div", { className: "setting" }, button);
    return h(React.Fragment, null, result, entry);
  });

  // --- the page -----------------------------------------------------------------------
  function outcomeOf(before, after) {
    // The job ended; status.json tells whether our task succeeded.
    if (!after || JSON.stringify(before || {}) === JSON.stringify(after)) {
      return { ok: false, message: "The task ended without recording an outcome: see Settings > Logs." };
    }
    const failed = Boolean(after.failing); // the status file's rule (core/status.py JobRecord.failing)
    return { ok: !failed, message: after.last_message || (failed ? "failed" : "done") };
  }

  function useJob(mode, onDone) {
    const [state, setState] = React.useState({ running: false, progress: null, outcome: null });
    async function start() {
      const before = (store.status && store.status.jobs && store.status.jobs[mode]) || null;
      setState({ running: true, progress: 0, outcome: null });
      try {
        const queued = await client().mutate({
          mutation: RUN,
          variables: { id: pluginId, args: { mode: mode }, description: "Stash Backup: " + TITLES[mode] },
        });
        const jobId = queued.data.runPluginTask;
        let job = null;
        for (;;) {
          const answer = await client().query({ query: JOB, variables: { id: jobId }, fetchPolicy: "network-only" });
          job = answer.data.findJob;
          if (!job || ["FINISHED", "CANCELLED", "FAILED"].includes(job.status)) break;
          setState({ running: true, progress: job.progress, outcome: null });
          await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
        }
        const status = await refreshStatus(false);
        let outcome;
        if (job && job.status === "CANCELLED") outcome = { ok: false, message: "Cancelled." };
        else if (job && job.status === "FAILED") outcome = { ok: false, message: job.error || "Stash could not run the task." };
        else outcome = outcomeOf(before, status && status.jobs && status.jobs[mode]);
        setState({ running: false, progress: null, outcome: outcome });
      } catch (error) {
        setState({ running: false, progress: null, outcome: { ok: false, message: error.message || String(error) } });
      }
      if (onDone) onDone();
    }
    return [state, start];
  }

  function ActionButton(props) {
    const [state, start] = useJob(props.mode);
    const busy = state.running;
    return h("div", { className: "stash-backup-action", "data-testid": "stash-backup-action-" + props.mode },
      h(Button, { variant: props.variant || "secondary", disabled: busy || props.disabled, onClick: start },
        busy ? h(Spinner, { animation: "border", size: "sm", className: "mr-2" }) : null, TITLES[props.mode]),
      busy && state.progress !== null
        ? h(ProgressBar, { now: Math.round((state.progress || 0) * 100), label: Math.round((state.progress || 0) * 100) + "%", className: "mt-2" })
        : null,
      state.outcome
        ? h(Alert, { variant: state.outcome.ok ? "success" : "danger", className: "mt-2 mb-0 stash-backup-outcome", "data-testid": "stash-backup-outcome-" + props.mode },
            state.outcome.message)
        : null);
  }

  function Summary(props) {
    const s = props.status;
    const fresh = !s.stale;
    return h(Card, { className: "stash-backup-summary mb-3" }, h(Card.Body, null,
      h("div", { className: "d-flex flex-wrap align-items-center" },
        h("h4", { className: "mb-0 mr-3" }, "Last verified backup: ",
          h("span", { "data-testid": "stash-backup-age" }, s.last_verified ? age(s.last_verified_age_seconds) + " ago" : "none")),
        h(Badge, { variant: fresh ? "success" : "danger", "data-testid": "stash-backup-state" }, fresh ? "Up to date" : "Overdue")),
      h("div", { className: "text-muted mt-1" },
        (s.last_verified ? when(s.last_verified) + " · " : "") + "expected every " + s.interval +
        " · automatic backups " + (s.auto_backup ? "on" : "off (Settings > Plugins > Stash Backup)") +
        " · notifications " + (s.notifications ? "on" : "off")),
      h("div", { className: "mt-2" },
        "Archive ", h("code", null, s.archive.folder), ": " + s.archive.backups + " backup(s), " + size(s.archive.size) +
        "; free on its disk: " + size(s.archive.free))));
  }

  function LastFailure(props) {
    const failure = props.failure;
    if (!failure) return null;
    return h(Alert, { variant: "danger", "data-testid": "stash-backup-last-failure" },
      h("strong", null, (JOB_NAMES[failure.job] || failure.job) + " failed " + when(failure.at) + ": "), failure.message);
  }

  // The live database's health (the Check live database task, and the check before each
  // backup): damage holds retention, and the page names the backup to restore.
  function LiveDatabase(props) {
    const live = props.live;
    if (!live) return null;
    if (live.damaged_since) {
      return h(Alert, { variant: "danger", "data-testid": "stash-backup-live-damaged" },
        h("strong", null, "Stash's live database is damaged (first seen " + when(live.damaged_since) + "). "),
        (live.damage_reason || live.message) + ". ",
        live.restore ? h(React.Fragment, null, "Restore ", h("code", null, live.restore),
          " (the newest verified backup from before the damage) with stash-restore. ")
          : "No verified backup predates the damage. ",
        "Retention removes nothing until a healthy backup is made.");
    }
    return h("p", { className: "text-muted", "data-testid": "stash-backup-live-ok" },
      "Live database: " + (live.ok ? "healthy" : "check failed: " + live.message) + (live.checked_at ? " (checked " + when(live.checked_at) + ")" : ""));
  }

  function BackupsTable(props) {
    const rows = props.backups;
    if (!rows.length) return h("p", { className: "text-muted" }, "No backups in the archive yet: press Back up now.");
    const header = ["Time", "Schema", "Size", "New", "Images", "Verified", "Drill", "Off-site"];
    const hideOnPhone = { New: true, Schema: true, Drill: true, "Off-site": true };
    return h("div", { className: "table-responsive" }, h(Table, { striped: true, size: "sm", className: "stash-backup-table", "data-testid": "stash-backup-table" },
      h("thead", null, h("tr", null, header.map((name) => h("th", { key: name, className: hideOnPhone[name] ? "d-none d-md-table-cell" : "" }, name)))),
      h("tbody", null, rows.map((b) => h("tr", { key: b.file, title: b.file },
        h("td", null, when(b.added_at || b.created)),
        h("td", { className: "d-none d-md-table-cell" }, b.schema_version),
        h("td", null, size(b.size)),
        h("td", { className: "d-none d-md-table-cell" }, size(b.new_bytes)),
        h("td", null, b.includes_blobs ? b.blob_count : "db only"),
        h("td", null, b.salvaged ? h(Badge, { variant: "warning", "data-testid": "stash-backup-salvaged", title: "Recovered from a damaged database: rows may be missing; never counted as a good backup. Restore only with stash-restore --allow-salvaged." }, "salvaged")
          : b.verified_ok ? h(Badge, { variant: "success" }, "verified")
          : h(Badge, { variant: b.verified_at ? "danger" : "secondary", title: b.verify_error || "" }, b.verified_at ? "BAD" : "unverified"),
          b.pre_upgrade ? h(Badge, { variant: "info", className: "ml-1", title: "Stash's own backup from before a schema migration: kept until a verified backup of the new schema passes a restore drill" }, "pre-upgrade " + b.pre_upgrade) : null),
        h("td", { className: "d-none d-md-table-cell", "data-testid": "stash-backup-drill" }, !(b.drill && b.drill.at) ? "—"
          : h(Badge, { variant: b.drill.ok ? "success" : "danger", title: (b.drill.ok ? "" : [b.drill.error].concat(b.drill.differences || []).filter(Boolean).join("; ") + " — ") + "Stash " + (b.drill.stash_version || "?") + (b.drill.migrated ? ", migrated" : "") + ", " + b.drill.seconds + " s, " + when(b.drill.at) },
            b.drill.ok ? "booted" : "FAILED")),
        h("td", { className: "d-none d-md-table-cell" }, b.offsite ? h(Badge, { variant: "info" }, b.offsite) : "—"))))));
  }

  function BackupsPage() {
    const { status, error } = useStatus(true);
    React.useEffect(() => { refreshStatus(false); }, []);
    const modes = (status && status.modes) || [];
    const actions = ["download", "verify", "drill", "retention", "offsite"].filter((mode) => modes.includes(mode));
    return h("div", { className: "stash-backup-page container-lg mt-3", "data-testid": "stash-backup-page" },
      h("h2", null, "Backups"),
      error ? h(Alert, { variant: "danger" }, "The backup status could not be read: " + error) : null,
      !status && !error ? h(Spinner, { animation: "border" }) : null,
      status ? h(React.Fragment, null,
        h(Summary, { status: status }),
        h(LastFailure, { failure: status.last_failure }),
        h(LiveDatabase, { live: status.live_database }),
        h("div", { className: "stash-backup-actions mb-3" },
          actions.map((mode) => h(ActionButton, { key: mode, mode: mode, variant: mode === "download" ? "primary" : "secondary" }))),
        h("h4", null, "In the archive"),
        h(BackupsTable, { backups: status.backups })) : null);
  }

  api.register.route(pagePath, BackupsPage);
})();
