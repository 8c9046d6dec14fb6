//! With curfew's debug-level spans enabled, a task's poll runs inside its
//! `task` span, which names the task and its client, so that what the task
//! logs can be traced back to it.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span's fields, rendered, kept in the span's extensions.
#[derive(Default, Debug, Clone)]
struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

/// A span an event was inside: its target, name and fields.
type SpanSeen = (String, String, Fields);

/// For each event with the message "inside", the spans it was inside,
/// innermost first.
#[derive(Default, Clone)]
struct Scopes(Arc<Mutex<Vec<Vec<SpanSeen>>>>);

impl<S> tracing_subscriber::Layer<S> for Scopes
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut message = Fields::default();
        event.record(&mut message);
        if !message
            .0
            .iter()
            .any(|(k, v)| k == "message" && v == "inside")
        {
            return;
        }
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| {
                        let fields = span
                            .extensions()
                            .get::<Fields>()
                            .cloned()
                            .unwrap_or_default();
                        (
                            span.metadata().target().to_string(),
                            span.name().to_string(),
                            fields,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().push(scope);
    }
}

#[test]
fn a_task_polls_inside_its_span_when_debug_spans_are_enabled() {
    let scopes = Scopes::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(scopes.clone()))
        .unwrap();

    let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    let h = curfew::task::Builder::new()
        .name("resize")
        .client("192.0.2.9")
        .spawn_on(&rt.handle(), async { tracing::info!("inside") });
    rt.block_on(h).unwrap();

    let seen = scopes.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one event from inside the task: {seen:?}");
    let (target, name, fields) = seen[0]
        .iter()
        .find(|(_, name, _)| name == "task")
        .unwrap_or_else(|| panic!("the event is inside a `task` span: {:?}", seen[0]));
    assert_eq!(target, "curfew");
    assert_eq!(name, "task");
    let field = |k: &str| {
        fields
            .0
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("name").as_deref(), Some("resize"), "{fields:?}");
    assert_eq!(field("client").as_deref(), Some("192.0.2.9"), "{fields:?}");
}
