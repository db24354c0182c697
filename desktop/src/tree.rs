//! What is on screen, as JSON: the mapped widgets of each window with their
//! text, for `org.quantumos.Assistant1.Widgets` and the tests.

use adw::prelude::*;
use serde_json::{json, Value};

/// The widget and its mapped descendants.
pub fn widget(w: &gtk::Widget) -> Value {
    let type_name = w.type_().name().to_owned();
    let mut node = json!({ "type": type_name });
    let name = w.widget_name();
    if name.as_str() != type_name {
        node["name"] = name.as_str().into();
    }
    if let Some(label) = w.downcast_ref::<gtk::Label>() {
        node["text"] = label.text().as_str().into();
    } else if let Some(text) = w.downcast_ref::<gtk::Text>() {
        node["text"] = text.text().as_str().into();
        if let Some(p) = text.placeholder_text() {
            node["placeholder"] = p.as_str().into();
        }
    }
    if !w.is_sensitive() {
        node["insensitive"] = true.into();
    }
    let mut children = Vec::new();
    let mut child = w.first_child();
    while let Some(c) = child {
        if c.is_mapped() {
            children.push(widget(&c));
        }
        child = c.next_sibling();
    }
    if !children.is_empty() {
        node["children"] = children.into();
    }
    node
}

/// Every visible toplevel of this process (the main window and its dialogs).
pub fn windows() -> Value {
    gtk::Window::list_toplevels()
        .iter()
        .filter(|w| w.is_mapped())
        .map(widget)
        .collect::<Vec<_>>()
        .into()
}
