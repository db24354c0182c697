//! The window: a request box, the plan preview with Run plan / Cancel, the
//! cells quantumd runs with their figures and recent events, and the trail.
//!
//! Keyboard first: Enter in the request box asks, Ctrl+Enter runs the plan
//! shown, Esc drops it (and closes the window when there is none). The
//! colours follow the system's dark or light preference (libadwaita's
//! style manager).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use adw::prelude::*;
use quantum_bus::{CellDetail, CellInfo, TrailEntry};
use quantum_steppps::Figures;

use crate::control::{Call, Op};
use crate::daemon::{Request, Target, Update};
use crate::error::{chain, Error};
use crate::live;
use crate::plan::{Catalog, PlanView, Source};

/// The application id (and the .desktop file's name).
pub const APP_ID: &str = "org.quantumos.Assistant";

/// What the window needs to know at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    /// Where `org.quantumos.Assistant1` is offered; None: the session bus.
    pub control_bus: Option<String>,
    /// Whether to offer it at all.
    pub control: bool,
    pub catalog: PathBuf,
    /// The directory relative paths in a plan are resolved against.
    pub cwd: String,
    /// Started by D-Bus activation: GTK waits for the launcher's Activate.
    pub service: bool,
}

const CSS: &str = "
.plan-card { padding: 18px; }
.plan-card .param-name { font-family: monospace; }
.plan-card .missing { color: @error_color; font-weight: bold; }
.hint { font-size: smaller; }
.error-line { color: @error_color; }
";

/// Builds and runs the application; returns its exit code.
pub fn run(config: Config) -> gtk::glib::ExitCode {
    // GTK gets no arguments of ours (clap has read them) but the one that
    // makes GApplication a service, which then opens no window of its own.
    let args: &[&str] = if config.service {
        &["quantum-assistant", "--gapplication-service"]
    } else {
        &["quantum-assistant"]
    };
    let app = adw::Application::builder().application_id(APP_ID).build();
    app.connect_startup(|_| {
        let provider = gtk::CssProvider::new();
        provider.load_from_data(CSS);
        if let Some(display) = gtk::gdk::Display::default() {
            gtk::style_context_add_provider_for_display(&display, &provider, gtk::STYLE_PROVIDER_PRIORITY_APPLICATION);
        }
    });
    app.connect_activate(move |app| {
        if let Some(w) = app.active_window() {
            w.present();
            return;
        }
        match build(app, &config) {
            Ok(()) => {}
            Err(e) => tracing::error!(error = %chain(&e), "cannot start the assistant"),
        }
    });
    app.set_accels_for_action("win.confirm", &["<Control>Return", "<Control>KP_Enter"]);
    app.set_accels_for_action("win.cancel", &["Escape"]);
    app.run_with_args(args)
}

#[derive(Default)]
struct Model {
    plan: Option<PlanView>,
    asking: bool,
    cells: Vec<CellInfo>,
    figures: Option<Figures>,
    events: HashMap<String, VecDeque<String>>,
    /// How to reach running services, by instance.
    reach: HashMap<String, String>,
    /// Secrets quantumd made for instances this window started (their only
    /// copy outside the cell), by instance; gone with the instance.
    secrets: HashMap<String, HashMap<String, String>>,
    connected: bool,
}

struct Ui {
    window: adw::ApplicationWindow,
    toasts: adw::ToastOverlay,
    title: adw::WindowTitle,
    entry: gtk::Entry,
    ask_button: gtk::Button,
    error: gtk::Label,
    empty: adw::StatusPage,
    plan_area: gtk::Box,
    cells_section: gtk::Box,
    cells_list: gtk::ListBox,
    rows: RefCell<HashMap<String, CellRow>>,
    trail_section: gtk::Box,
    trail_list: gtk::ListBox,
    confirm: gtk::gio::SimpleAction,
    requests: async_channel::Sender<Request>,
    catalog: Catalog,
    cwd: String,
    /// This process's uid: trail entries by it say "you".
    uid: Option<u32>,
    model: RefCell<Model>,
}

struct CellRow {
    row: adw::ActionRow,
    stop: gtk::Button,
    inspect: gtk::Button,
    /// Opens a web service's address in the browser; hidden otherwise.
    open: gtk::LinkButton,
    /// Copies the secrets made for the instance to the clipboard; hidden
    /// when there are none.
    copy: gtk::Button,
}

fn build(app: &adw::Application, config: &Config) -> Result<(), Error> {
    let (requests, worker_requests) = async_channel::unbounded();
    let (worker_updates, updates) = async_channel::unbounded();
    let (calls, control_calls) = async_channel::unbounded::<Call>();
    start_worker(config, worker_requests, worker_updates, calls)?;

    let ui = Rc::new(widgets(app, config, requests));
    ui.window.present();
    ui.entry.grab_focus();
    ui.render_all();

    let u = ui.clone();
    gtk::glib::spawn_future_local(async move {
        while let Ok(update) = updates.recv().await {
            u.apply(update);
        }
    });
    let u = ui.clone();
    gtk::glib::spawn_future_local(async move {
        while let Ok(call) = control_calls.recv().await {
            let answer = u.control(call.op);
            let _ = call.reply.send(answer);
        }
    });
    Ok(())
}

/// The D-Bus thread: quantumd's connection and the control interface.
fn start_worker(
    config: &Config,
    requests: async_channel::Receiver<Request>,
    updates: async_channel::Sender<Update>,
    calls: async_channel::Sender<Call>,
) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let target = config.target.clone();
    let control = config.control.then(|| config.control_bus.clone());
    std::thread::Builder::new()
        .name("quantumd".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Kept for as long as the worker runs: dropping it would
                // withdraw the interface.
                let _control = match control {
                    Some(address) => match crate::control::offer(address.as_deref(), calls).await {
                        Ok(conn) => {
                            tracing::info!(name = crate::control::BUS_NAME, "control interface offered");
                            Some(conn)
                        }
                        Err(e) => {
                            tracing::warn!(error = %chain(&e), "no control interface");
                            None
                        }
                    },
                    None => None,
                };
                crate::daemon::serve(target, requests, updates).await;
            });
        })
        .map_err(Error::Runtime)?;
    Ok(())
}

fn label(text: &str, classes: &[&str]) -> gtk::Label {
    let l = gtk::Label::new(Some(text));
    l.set_xalign(0.0);
    l.set_wrap(true);
    l.set_wrap_mode(gtk::pango::WrapMode::WordChar);
    for c in classes {
        l.add_css_class(c);
    }
    l
}

fn section(title: &str) -> (gtk::Box, gtk::ListBox) {
    let section = gtk::Box::new(gtk::Orientation::Vertical, 8);
    section.append(&label(title, &["heading"]));
    let list = gtk::ListBox::new();
    list.set_selection_mode(gtk::SelectionMode::None);
    list.add_css_class("boxed-list");
    section.append(&list);
    (section, list)
}

fn widgets(app: &adw::Application, config: &Config, requests: async_channel::Sender<Request>) -> Ui {
    let title = adw::WindowTitle::new("QuantumOS Assistant", "connecting to quantumd…");
    let header = adw::HeaderBar::new();
    header.set_title_widget(Some(&title));

    let entry = gtk::Entry::builder()
        .placeholder_text("What do you need? For example: serve ~/Public on port 8080")
        .hexpand(true)
        .primary_icon_name("system-search-symbolic")
        .build();
    entry.set_widget_name("request");
    let ask_button = gtk::Button::with_label("Ask");
    ask_button.set_widget_name("ask");
    ask_button.add_css_class("suggested-action");
    let request_row = gtk::Box::new(gtk::Orientation::Horizontal, 8);
    request_row.append(&entry);
    request_row.append(&ask_button);
    let hint = label(
        "Enter asks · Ctrl+Enter runs the plan · Esc cancels it, or closes the window",
        &["dim-label", "hint"],
    );

    let error = label("", &["error-line"]);
    error.set_widget_name("error");
    error.set_visible(false);

    let empty = adw::StatusPage::builder()
        .icon_name("system-run-symbolic")
        .title("What do you need?")
        .description(
            "Type a request above and press Enter — for example “serve ~/Public on port 8080”, \
             “what is using my disk space” or “find files named report”.\n\
             QuantumOS shows its plan first: the cells it would start, their limits and what \
             each may touch. Nothing runs until you confirm.",
        )
        .vexpand(true)
        .build();
    empty.set_widget_name("empty");

    let plan_area = gtk::Box::new(gtk::Orientation::Vertical, 0);
    plan_area.set_widget_name("plan");
    let (cells_section, cells_list) = section("Cells");
    cells_section.set_widget_name("cells");
    let (trail_section, trail_list) = section("Trail — what quantumd did, newest first");
    trail_section.set_widget_name("trail");

    let body = gtk::Box::new(gtk::Orientation::Vertical, 18);
    body.set_margin_top(18);
    body.set_margin_bottom(24);
    body.set_margin_start(18);
    body.set_margin_end(18);
    for w in [
        request_row.upcast_ref::<gtk::Widget>(),
        hint.upcast_ref(),
        error.upcast_ref(),
        empty.upcast_ref(),
        plan_area.upcast_ref(),
        cells_section.upcast_ref(),
        trail_section.upcast_ref(),
    ] {
        body.append(w);
    }
    let clamp = adw::Clamp::builder().maximum_size(860).child(&body).build();
    let scroll = gtk::ScrolledWindow::builder()
        .hscrollbar_policy(gtk::PolicyType::Never)
        .vexpand(true)
        .child(&clamp)
        .build();
    let toasts = adw::ToastOverlay::new();
    toasts.set_child(Some(&scroll));
    let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
    content.append(&header);
    content.append(&toasts);

    let window = adw::ApplicationWindow::builder()
        .application(app)
        .title("QuantumOS Assistant")
        .default_width(900)
        .default_height(720)
        .content(&content)
        .build();

    let confirm = gtk::gio::SimpleAction::new("confirm", None);
    confirm.set_enabled(false);
    window.add_action(&confirm);
    let cancel = gtk::gio::SimpleAction::new("cancel", None);
    window.add_action(&cancel);

    Ui {
        window,
        toasts,
        title,
        entry,
        ask_button,
        error,
        empty,
        plan_area,
        cells_section,
        cells_list,
        rows: RefCell::new(HashMap::new()),
        trail_section,
        trail_list,
        confirm,
        requests,
        catalog: Catalog::new(&config.catalog),
        cwd: config.cwd.clone(),
        uid: live::own_uid(),
        model: RefCell::new(Model::default()),
    }
}

impl Ui {
    fn send(&self, request: Request) {
        if self.requests.try_send(request).is_err() {
            self.show_error(&Error::WorkerGone);
        }
    }

    fn show_error(&self, e: &Error) {
        let text = chain(e);
        tracing::warn!(error = %text, "shown to the user");
        self.error.set_text(&text);
        self.error.set_visible(true);
    }

    fn clear_error(&self) {
        self.error.set_visible(false);
        self.error.set_text("");
    }

    fn ask(&self) {
        let text = self.entry.text().trim().to_owned();
        if text.is_empty() || self.model.borrow().asking {
            return;
        }
        self.clear_error();
        {
            let mut m = self.model.borrow_mut();
            m.asking = true;
            m.plan = None;
        }
        self.send(Request::Ask(text));
        self.render_plan();
    }

    fn run_plan(&self) {
        let plan_id = match self.model.borrow().plan.as_ref() {
            Some(p) if p.runnable() => p.plan_id.clone(),
            _ => None,
        };
        if let Some(plan_id) = plan_id {
            self.confirm.set_enabled(false);
            self.send(Request::Execute {
                plan_id,
                cwd: self.cwd.clone(),
            });
        }
    }

    /// Esc: drop the plan, or close the window when there is none.
    fn cancel(&self) {
        let had_plan = self.model.borrow_mut().plan.take().is_some();
        if had_plan {
            self.render_plan();
            self.entry.grab_focus();
        } else {
            self.window.close();
        }
    }

    fn apply(self: &Rc<Self>, update: Update) {
        match update {
            Update::Connected { version, backend } => {
                self.model.borrow_mut().connected = true;
                let backend_word = backend.split_whitespace().next().unwrap_or("").trim_end_matches(':').to_owned();
                self.title.set_subtitle(&format!("quantumd {version} · {backend_word} backend"));
                self.title.set_tooltip_text(Some(&backend));
                self.clear_error();
            }
            Update::Unreachable(e) => {
                self.model.borrow_mut().connected = false;
                self.title.set_subtitle("quantumd is not reachable — trying again");
                self.show_error(&e);
            }
            Update::Plan(answer) => {
                self.model.borrow_mut().asking = false;
                match answer {
                    Ok(answer) => {
                        let view = self.catalog.view(&answer);
                        tracing::info!(intent = %view.intent, cells = view.cells.len(), "plan shown");
                        self.model.borrow_mut().plan = Some(view);
                    }
                    Err(e) => self.show_error(&e),
                }
                self.render_plan();
            }
            Update::Executed(result) => match result {
                Ok(started) => {
                    let names: Vec<_> = started.iter().map(|s| s.info.instance.as_str()).collect();
                    tracing::info!(started = ?names, "plan ran");
                    self.toast(&format!("Started {}", names.join(", ")));
                    let mut m = self.model.borrow_mut();
                    for s in &started {
                        if !s.reach.is_empty() {
                            m.reach.insert(s.info.instance.clone(), s.reach.clone());
                        }
                        if !s.secrets.is_empty() {
                            m.secrets.insert(s.info.instance.clone(), s.secrets.clone());
                        }
                    }
                    drop(m);
                    self.render_cells();
                    self.model.borrow_mut().plan = None;
                    self.entry.set_text("");
                    self.render_plan();
                    self.entry.grab_focus();
                }
                Err(e) => {
                    self.show_error(&e);
                    self.render_plan();
                }
            },
            Update::Stopped(result) => match result {
                Ok(stopped) => self.toast(&format!("Stopped {}", stopped.join(", "))),
                Err(e) => {
                    self.show_error(&e);
                    // Stop may be clicked again.
                    for r in self.rows.borrow().values() {
                        r.stop.set_sensitive(true);
                    }
                }
            },
            Update::Detail(result) => match result {
                Ok(detail) => self.show_detail(&detail),
                Err(e) => self.show_error(&e),
            },
            Update::Cells(cells) => {
                let mut m = self.model.borrow_mut();
                // Events of instances quantumd no longer lists go with them.
                m.events.retain(|instance, _| cells.iter().any(|c| &c.instance == instance));
                m.reach
                    .retain(|instance, _| cells.iter().any(|c| &c.instance == instance && live::is_live(c)));
                m.secrets
                    .retain(|instance, _| cells.iter().any(|c| &c.instance == instance && live::is_live(c)));
                m.cells = cells;
                drop(m);
                self.render_cells();
            }
            Update::Figures(figures) => {
                self.model.borrow_mut().figures = Some(*figures);
                self.render_cells();
            }
            Update::Reach { instance, reach } => {
                self.model.borrow_mut().reach.insert(instance, reach);
                self.render_cells();
            }
            Update::Trail(entries) => self.render_trail(&entries),
            Update::Event { instance, text } => {
                let now = now_hms();
                {
                    let mut m = self.model.borrow_mut();
                    live::remember(m.events.entry(instance).or_default(), &now, &text);
                }
                self.render_cells();
            }
            Update::Failed(e) => self.show_error(&e),
        }
        self.render_empty();
    }

    fn toast(&self, text: &str) {
        self.toasts.add_toast(adw::Toast::new(text));
    }

    fn render_all(self: &Rc<Self>) {
        self.wire();
        self.render_plan();
        self.render_cells();
        self.trail_section.set_visible(false);
        self.render_empty();
    }

    /// Connects the request box, the Ask button and the window actions.
    fn wire(self: &Rc<Self>) {
        let u = self.clone();
        self.entry.connect_activate(move |_| u.ask());
        let u = self.clone();
        self.ask_button.connect_clicked(move |_| u.ask());
        let u = self.clone();
        self.confirm.connect_activate(move |_, _| u.run_plan());
        if let Some(cancel) = self.window.lookup_action("cancel") {
            if let Ok(cancel) = cancel.downcast::<gtk::gio::SimpleAction>() {
                let u = self.clone();
                cancel.connect_activate(move |_, _| u.cancel());
            }
        }
    }

    fn render_empty(&self) {
        let m = self.model.borrow();
        let empty = m.plan.is_none() && !m.asking && m.cells.is_empty();
        self.empty.set_visible(empty);
    }

    fn render_plan(&self) {
        while let Some(child) = self.plan_area.first_child() {
            self.plan_area.remove(&child);
        }
        let m = self.model.borrow();
        self.ask_button.set_sensitive(!m.asking);
        self.ask_button.set_label(if m.asking { "Asking…" } else { "Ask" });
        if m.asking {
            let row = gtk::Box::new(gtk::Orientation::Horizontal, 12);
            let spinner = gtk::Spinner::new();
            spinner.start();
            row.append(&spinner);
            row.append(&label(
                "Planning… (the first request after quantumd starts may take a few seconds)",
                &["dim-label"],
            ));
            self.plan_area.append(&row);
        }
        let Some(plan) = m.plan.as_ref() else {
            self.confirm.set_enabled(false);
            self.plan_area.set_visible(m.asking);
            return;
        };
        self.plan_area.set_visible(true);
        self.confirm.set_enabled(plan.runnable());
        self.plan_area.append(&plan_card(plan));
    }

    fn render_cells(self: &Rc<Self>) {
        let m = self.model.borrow();
        self.cells_section.set_visible(!m.cells.is_empty());
        let mut rows = self.rows.borrow_mut();
        rows.retain(|instance, r| {
            let keep = m.cells.iter().any(|c| &c.instance == instance);
            if !keep {
                self.cells_list.remove(&r.row);
            }
            keep
        });
        // Newest first: quantumd lists in start order.
        for cell in m.cells.iter().rev() {
            let r = rows.entry(cell.instance.clone()).or_insert_with(|| self.cell_row(cell));
            let mut lines = vec![live::state_line(cell)];
            let reach = m.reach.get(&cell.instance).filter(|_| live::is_live(cell));
            if let Some(reach) = reach {
                lines.push(format!("reach it at {reach}"));
            }
            r.open
                .set_visible(reach.is_some_and(|r| r.starts_with("http://") || r.starts_with("https://")));
            if let Some(reach) = reach {
                r.open.set_uri(reach);
            }
            let secrets = m.secrets.get(&cell.instance).filter(|_| live::is_live(cell));
            if let Some(secrets) = secrets {
                lines.extend(live::secret_lines(secrets));
            }
            r.copy.set_visible(secrets.is_some());
            if live::is_live(cell) {
                if let Some(f) = m.figures.as_ref().and_then(|f| live::figures_line(&cell.instance, f)) {
                    lines.push(f);
                }
            }
            if let Some(events) = m.events.get(&cell.instance) {
                lines.push(format!("recent: {}", events.iter().cloned().collect::<Vec<_>>().join(" · ")));
            }
            r.row.set_subtitle(&gtk::glib::markup_escape_text(&lines.join("\n")));
            r.stop.set_visible(live::is_live(cell));
        }
        // Keep the list in the order above.
        let mut previous: Option<gtk::Widget> = None;
        for cell in m.cells.iter().rev() {
            if let Some(r) = rows.get(&cell.instance) {
                let w: &gtk::Widget = r.row.upcast_ref();
                if w.prev_sibling() != previous {
                    self.cells_list.remove(w);
                    let pos = previous
                        .as_ref()
                        .map_or(0, |p| p.downcast_ref::<gtk::ListBoxRow>().map_or(0, |row| row.index() + 1));
                    self.cells_list.insert(w, pos);
                }
                previous = Some(w.clone());
            }
        }
    }

    fn cell_row(self: &Rc<Self>, cell: &CellInfo) -> CellRow {
        let description = self.catalog.manifest(&cell.cell).map(|m| m.description).unwrap_or_default();
        let title = if description.is_empty() {
            cell.instance.clone()
        } else {
            format!("{} — {}", cell.instance, description)
        };
        let row = adw::ActionRow::builder()
            .title(gtk::glib::markup_escape_text(&title).as_str())
            .subtitle_lines(0)
            .build();
        row.set_widget_name(&format!("cell:{}", cell.instance));
        let inspect = gtk::Button::with_label("Inspect");
        inspect.set_widget_name(&format!("inspect:{}", cell.instance));
        inspect.set_valign(gtk::Align::Center);
        let stop = gtk::Button::with_label("Stop");
        stop.set_widget_name(&format!("stop:{}", cell.instance));
        stop.set_valign(gtk::Align::Center);
        stop.add_css_class("destructive-action");
        let open = gtk::LinkButton::with_label("", "Open");
        open.set_widget_name(&format!("open:{}", cell.instance));
        open.set_valign(gtk::Align::Center);
        open.set_visible(false);
        let copy = gtk::Button::with_label("Copy secret");
        copy.set_widget_name(&format!("copy:{}", cell.instance));
        copy.set_valign(gtk::Align::Center);
        copy.set_visible(false);
        copy.set_tooltip_text(Some("Copy what quantumd made for this run (shown only here) to the clipboard"));
        row.add_suffix(&open);
        row.add_suffix(&copy);
        row.add_suffix(&inspect);
        row.add_suffix(&stop);
        let u = self.clone();
        let instance = cell.instance.clone();
        inspect.connect_clicked(move |_| u.send(Request::Inspect(instance.clone())));
        let u = self.clone();
        let instance = cell.instance.clone();
        stop.connect_clicked(move |b| {
            b.set_sensitive(false);
            u.send(Request::Stop(instance.clone()));
        });
        let u = self.clone();
        let instance = cell.instance.clone();
        copy.connect_clicked(move |b| {
            let text = u.model.borrow().secrets.get(&instance).map(|s| live::secret_lines(s).join("\n"));
            if let Some(text) = text {
                b.clipboard().set_text(&text);
                u.toast("Copied to the clipboard");
            }
        });
        self.cells_list.append(&row);
        CellRow {
            row,
            stop,
            inspect,
            open,
            copy,
        }
    }

    fn render_trail(&self, entries: &[TrailEntry]) {
        while let Some(child) = self.trail_list.first_child() {
            self.trail_list.remove(&child);
        }
        self.trail_section.set_visible(!entries.is_empty());
        for entry in entries.iter().rev() {
            let (title, subtitle) = live::trail_lines(entry, self.uid);
            let time = hms(entry.time_ns / 1_000_000_000);
            let row = adw::ActionRow::builder()
                .title(gtk::glib::markup_escape_text(&format!("{time}  {title}")).as_str())
                .subtitle(gtk::glib::markup_escape_text(&subtitle).as_str())
                .subtitle_lines(1)
                .build();
            if !entry.ok {
                row.add_css_class("error");
            }
            self.trail_list.append(&row);
        }
    }

    fn show_detail(&self, d: &CellDetail) {
        let mut params: Vec<_> = d.params.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        params.sort();
        let mut props: Vec<_> = d.properties.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        props.sort();
        let none = || "none".to_owned();
        let mut rows = vec![
            ("state", live::state_line(&d.info)),
            ("unit", d.info.unit.clone()),
            ("manifest", format!("{} (version {})", d.manifest_path, d.version)),
            ("command", d.argv.join(" ")),
            ("parameters", if params.is_empty() { none() } else { params.join("\n") }),
            ("limits and sandbox", if props.is_empty() { none() } else { props.join("\n") }),
            ("restarts", format!("{} in the current window", d.restarts)),
        ];
        if !d.needs.is_empty() {
            rows.push(("needs", d.needs.join(", ")));
        }
        if !d.children.is_empty() {
            rows.push(("children", d.children.join(", ")));
        }
        let grid = gtk::Grid::builder()
            .column_spacing(16)
            .row_spacing(8)
            .margin_top(18)
            .margin_bottom(18)
            .margin_start(18)
            .margin_end(18)
            .build();
        for (i, (key, value)) in rows.iter().enumerate() {
            let row = i32::try_from(i).unwrap_or(i32::MAX);
            let k = gtk::Label::new(Some(key));
            k.set_xalign(0.0);
            k.set_valign(gtk::Align::Start);
            k.add_css_class("dim-label");
            grid.attach(&k, 0, row, 1, 1);
            let v = label(value, &[]);
            v.set_selectable(true);
            // Selectable with the mouse, but not focused (and all selected) on open.
            v.set_focusable(false);
            v.set_hexpand(true);
            grid.attach(&v, 1, row, 1, 1);
        }
        let title = adw::WindowTitle::new(&d.info.instance, "what quantumd applied");
        let header = adw::HeaderBar::new();
        header.set_title_widget(Some(&title));
        let scroll = gtk::ScrolledWindow::builder()
            .hscrollbar_policy(gtk::PolicyType::Never)
            .vexpand(true)
            .child(&grid)
            .build();
        let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
        content.append(&header);
        content.append(&scroll);
        let dialog = adw::Window::builder()
            .transient_for(&self.window)
            .modal(true)
            .title(d.info.instance.as_str())
            .default_width(720)
            .default_height(520)
            .content(&content)
            .build();
        dialog.set_widget_name("detail");
        // Esc closes it, as it closes everything else here.
        let keys = gtk::ShortcutController::new();
        keys.add_shortcut(gtk::Shortcut::new(
            gtk::ShortcutTrigger::parse_string("Escape"),
            Some(gtk::NamedAction::new("window.close")),
        ));
        dialog.add_controller(keys);
        dialog.present();
    }

    /// A control call, done through the window's own widgets and actions.
    fn control(&self, op: Op) -> Result<String, Error> {
        tracing::debug!(?op, "control call");
        match op {
            Op::Ask(text) => {
                if text.trim().is_empty() {
                    return Err(Error::NotNow("an empty request asks nothing".to_owned()));
                }
                self.entry.set_text(&text);
                self.entry.emit_activate();
                Ok(String::new())
            }
            Op::Confirm => {
                if !self.confirm.is_enabled() {
                    return Err(Error::NotNow("there is no plan that can run".to_owned()));
                }
                self.activate("win.confirm")
            }
            Op::Cancel => self.activate("win.cancel"),
            Op::Stop(instance) => self.click(&format!("stop:{instance}"), &instance),
            Op::Inspect(instance) => self.click(&format!("inspect:{instance}"), &instance),
            Op::Widgets => Ok(crate::tree::windows().to_string()),
        }
    }

    fn activate(&self, action: &str) -> Result<String, Error> {
        WidgetExt::activate_action(&self.window, action, None).map_err(|e| Error::NotNow(format!("{action}: {e}")))?;
        Ok(String::new())
    }

    fn click(&self, name: &str, instance: &str) -> Result<String, Error> {
        let rows = self.rows.borrow();
        let r = rows
            .get(instance)
            .ok_or_else(|| Error::NotNow(format!("no cell {instance} is shown")))?;
        let button = if name.starts_with("stop:") { &r.stop } else { &r.inspect };
        if !button.is_visible() || !button.is_sensitive() {
            return Err(Error::NotNow(format!("{name} cannot be clicked now")));
        }
        button.emit_clicked();
        Ok(String::new())
    }
}

/// The plan preview: what would run, with what, within which limits, and
/// what each cell may touch; then Cancel and Run plan.
fn plan_card(plan: &PlanView) -> gtk::Box {
    let card = gtk::Box::new(gtk::Orientation::Vertical, 10);
    card.add_css_class("card");
    card.add_css_class("plan-card");
    if let Some(reason) = &plan.refusal {
        card.append(&label(&format!("No plan for “{}”", plan.intent), &["title-4"]));
        card.append(&label(reason, &[]));
        card.append(&label(
            "Nothing was run. Try saying what you need in other words, or name the thing to act on (a folder, a port, a host).",
            &["dim-label"],
        ));
        card.append(&buttons(false, "Dismiss (Esc)"));
        return card;
    }
    card.append(&label(&format!("Plan for “{}”", plan.intent), &["title-4"]));
    card.append(&label(
        &format!(
            "{} cell{} would start (match confidence {:.0} %). Nothing runs until you press Run plan.",
            plan.cells.len(),
            if plan.cells.len() == 1 { "" } else { "s" },
            plan.confidence * 100.0
        ),
        &["dim-label"],
    ));
    for (i, cell) in plan.cells.iter().enumerate() {
        let heading = if cell.description.is_empty() {
            format!("{}. {}", i + 1, cell.name)
        } else {
            format!("{}. {} — {}", i + 1, cell.name, cell.description)
        };
        let h = label(&heading, &["heading"]);
        h.set_margin_top(6);
        card.append(&h);
        let grid = gtk::Grid::builder().column_spacing(16).row_spacing(4).margin_start(16).build();
        let mut row = 0;
        for p in &cell.params {
            grid.attach(&label(&p.name, &["param-name", "dim-label"]), 0, row, 1, 1);
            let value = match p.source {
                Source::Given => label(&p.value, &[]),
                Source::Default => label(&format!("{} (default)", p.value), &[]),
                Source::Missing => label("missing — say it in your request", &["missing"]),
            };
            value.set_hexpand(true);
            grid.attach(&value, 1, row, 1, 1);
            row += 1;
        }
        let (limits, touches) = if cell.known {
            (cell.resources.clone(), cell.touches.clone())
        } else {
            ("unknown: this cell is not in the local catalog".to_owned(), "unknown".to_owned())
        };
        grid.attach(&label("limits", &["param-name", "dim-label"]), 0, row, 1, 1);
        grid.attach(&label(&limits, &[]), 1, row, 1, 1);
        grid.attach(&label("may touch", &["param-name", "dim-label"]), 0, row + 1, 1, 1);
        grid.attach(&label(&touches, &[]), 1, row + 1, 1, 1);
        card.append(&grid);
    }
    let missing = plan.missing();
    if !missing.is_empty() {
        card.append(&label(
            &format!("Cannot run yet: {} missing. Ask again and say it.", missing.join(", ")),
            &["missing"],
        ));
    }
    card.append(&buttons(plan.runnable(), "Cancel (Esc)"));
    card
}

fn buttons(runnable: bool, cancel_label: &str) -> gtk::Box {
    let row = gtk::Box::new(gtk::Orientation::Horizontal, 8);
    row.set_halign(gtk::Align::End);
    row.set_margin_top(8);
    let cancel = gtk::Button::with_label(cancel_label);
    cancel.set_widget_name("cancel");
    cancel.set_action_name(Some("win.cancel"));
    row.append(&cancel);
    if runnable {
        let run = gtk::Button::with_label("Run plan (Ctrl+Enter)");
        run.set_widget_name("confirm");
        run.add_css_class("suggested-action");
        run.set_action_name(Some("win.confirm"));
        row.append(&run);
    }
    row
}

fn hms(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| gtk::glib::DateTime::from_unix_local(s).ok())
        .and_then(|d| d.format("%H:%M:%S").ok())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn now_hms() -> String {
    gtk::glib::DateTime::now_local()
        .ok()
        .and_then(|d| d.format("%H:%M:%S").ok())
        .map(|s| s.to_string())
        .unwrap_or_default()
}
