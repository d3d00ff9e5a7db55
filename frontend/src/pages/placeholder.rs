use leptos::prelude::*;

/// An area of the product that is not built yet, said plainly.
#[component]
pub fn Placeholder(title: &'static str, text: &'static str) -> impl IntoView {
    view! {
        <div class="page-head"><h1>{title}</h1></div>
        <section class="panel empty" data-testid="placeholder">
            <h2>"Not available yet"</h2>
            <p class="muted">{text}</p>
            <p class="muted">"This area is coming in a later release."</p>
        </section>
    }
}
