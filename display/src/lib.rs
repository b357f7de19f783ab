//! The graphical console's window (`--console=gui`, `--qemu-gui`): it shows the virtio-gpu
//! scanout ([`devices::virtio::gpu::Screen`]) and turns the window's keyboard and pointer events
//! into virtio-input events for the guest's keyboard and tablet.
//!
//! The window runs on a thread of its own (winit's event loop, with softbuffer presenting the
//! pixels), on X11 or Wayland. The GPU device's thread copies a flushed rectangle into the
//! shared frame and wakes the window; the window copies only that rectangle into its buffer
//! and presents only it. No vCPU ever waits for the window: vCPUs only notify queues, and the
//! frame's lock is held by the GPU thread and the window for one rectangle's copy at most.

use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use devices::virtio::gpu::{Rect, Screen};
use devices::virtio::input::{
    ABS_X, ABS_Y, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, EV_ABS, EV_KEY, EV_REL, EV_SYN, InputEvent,
    InputEvents, REL_WHEEL,
};
use winit::application::ApplicationHandler;
use winit::dpi::PhysicalSize;
use winit::event::{ElementState, MouseButton, MouseScrollDelta, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop, EventLoopProxy};
use winit::keyboard::PhysicalKey;
use winit::platform::scancode::PhysicalKeyExtScancode;
use winit::window::{Window, WindowId};

/// Errors opening the window.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `$WAYLAND_DISPLAY` nor `$DISPLAY` names a display.
    #[error(
        "No graphical display: neither $WAYLAND_DISPLAY nor $DISPLAY is set (--console=gui needs one)."
    )]
    NoDisplay,
    /// The display could not be reached or the window not made.
    #[error("Failed to open the window on the display: {0}")]
    Window(String),
}

impl Error {
    /// The errno the process exits with: ENXIO ("no such device or address") for a missing
    /// or unreachable display.
    pub fn errno(&self) -> i32 {
        6
    }
}

/// Whether a display is named in the environment (`$WAYLAND_DISPLAY` or `$DISPLAY`).
pub fn check_environment() -> Result<(), Error> {
    let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
    if set("WAYLAND_DISPLAY") || set("DISPLAY") {
        Ok(())
    } else {
        Err(Error::NoDisplay)
    }
}

/// Where the window reports its presents (a status-line printer).
pub type Trace = Box<dyn Fn(&str) + Send>;

/// What the window shows and where its input goes.
pub struct Config {
    /// The window's title (vmspawn's: `Virtual Machine NAME`).
    pub title: String,
    /// The guest's screen.
    pub screen: Arc<Screen>,
    /// The guest's keyboard.
    pub keyboard: InputEvents,
    /// The guest's tablet (absolute pointer).
    pub tablet: InputEvents,
    /// Called once when the user closes the window, or when the display goes away under it.
    pub on_close: Box<dyn Fn() + Send>,
    /// Where to report, for each presented update, the time since the guest's flush reached
    /// the device (rvmspawn's debug level; `scripts/bench-gui.sh` reads it).
    pub trace: Option<Trace>,
}

enum UserEvent {
    /// New damage in the frame.
    Damage,
    /// Close the window and end the thread.
    Exit,
}

/// The open window; dropping it closes the window and joins its thread.
pub struct Display {
    proxy: EventLoopProxy<UserEvent>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Display").finish_non_exhaustive()
    }
}

/// Open the window on its own thread; returns once the window exists (or could not be made).
pub fn open(config: Config) -> Result<Display, Error> {
    check_environment()?;
    let (tx, rx) = mpsc::channel::<Result<EventLoopProxy<UserEvent>, String>>();
    let thread = std::thread::Builder::new()
        .name("display".into())
        .spawn(move || run(config, tx))
        .map_err(|e| Error::Window(e.to_string()))?;
    match rx.recv() {
        Ok(Ok(proxy)) => Ok(Display {
            proxy,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(Error::Window(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::Window("the display thread ended".into()))
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.proxy.send_event(UserEvent::Exit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Ready = mpsc::Sender<Result<EventLoopProxy<UserEvent>, String>>;

fn run(config: Config, ready: Ready) {
    let mut builder = EventLoop::<UserEvent>::with_user_event();
    // The event loop is not on the main thread (that one runs the VMM's event loop).
    winit::platform::x11::EventLoopBuilderExtX11::with_any_thread(&mut builder, true);
    winit::platform::wayland::EventLoopBuilderExtWayland::with_any_thread(&mut builder, true);
    let event_loop = match builder.build() {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let proxy = event_loop.create_proxy();
    let waker = proxy.clone();
    config.screen.set_waker(Box::new(move || {
        let _ = waker.send_event(UserEvent::Damage);
    }));
    let screen = config.screen.clone();
    let mut app = App {
        config,
        ready: Some((ready, proxy)),
        window: None,
        mode: u64::MAX,
        full: true,
        pressed: Vec::new(),
        buttons: 0,
        exiting: false,
        closed: false,
    };
    let result = event_loop.run_app(&mut app);
    if let Err(e) = &result
        && let Some((ready, _)) = app.ready.take()
    {
        let _ = ready.send(Err(e.to_string()));
    } else if app.window.is_some() && !app.exiting && !app.closed {
        // The display went away under a running VM (the X server ended, the compositor
        // crashed): as QEMU's window does, that ends the VM.
        (app.config.on_close)();
    }
    // No wakes for a window that is gone.
    screen.set_waker(Box::new(|| {}));
}

struct Surface {
    window: Rc<Window>,
    surface: softbuffer::Surface<Rc<Window>, Rc<Window>>,
    size: (u32, u32),
}

struct App {
    config: Config,
    /// Until the window exists: where to say so.
    ready: Option<(Ready, EventLoopProxy<UserEvent>)>,
    window: Option<Surface>,
    /// The frame's mode the window was last sized for.
    mode: u64,
    /// The next paint copies everything (a new mode, an expose, a new buffer).
    full: bool,
    /// Keys held down, released when the window loses the focus.
    pressed: Vec<u16>,
    /// Pointer buttons held down (bit per button).
    buttons: u8,
    /// The VMM asked the window to go ([`Display`] dropped).
    exiting: bool,
    /// The user closed the window (`on_close` called).
    closed: bool,
}

fn ev(kind: u16, code: u16, value: u32) -> InputEvent {
    InputEvent { kind, code, value }
}

const SYN: InputEvent = InputEvent {
    kind: EV_SYN,
    code: 0,
    value: 0,
};

/// A window position scaled to the tablet's range over the guest's screen.
pub fn tablet_position(pos: f64, screen: u32) -> u32 {
    let max = devices::virtio::input::TABLET_MAX;
    if screen < 2 {
        return 0;
    }
    let last = f64::from(screen - 1);
    let p = pos.clamp(0.0, last);
    ((p * f64::from(max)) / last) as u32
}

impl App {
    fn create(&mut self, el: &ActiveEventLoop) -> Result<(), String> {
        let (w, h) = self.config.screen.preferred_size();
        let attrs = Window::default_attributes()
            .with_title(self.config.title.clone())
            .with_inner_size(PhysicalSize::new(w, h));
        let window = Rc::new(el.create_window(attrs).map_err(|e| e.to_string())?);
        let context = softbuffer::Context::new(window.clone()).map_err(|e| e.to_string())?;
        let surface =
            softbuffer::Surface::new(&context, window.clone()).map_err(|e| e.to_string())?;
        let size = window.inner_size();
        self.window = Some(Surface {
            window,
            surface,
            size: (size.width, size.height),
        });
        Ok(())
    }

    /// Copy what changed (everything after a new mode or expose) into the window's buffer and
    /// present only that.
    fn paint(&mut self) {
        let Some(s) = self.window.as_mut() else {
            return;
        };
        {
            let mut f = self.config.screen.frame();
            if f.mode != self.mode && f.width > 0 {
                // The window follows the guest's mode.
                if let Some(new) = s
                    .window
                    .request_inner_size(PhysicalSize::new(f.width, f.height))
                {
                    s.size = (new.width, new.height);
                }
                self.mode = f.mode;
                self.full = true;
            }
            let (Some(ww), Some(wh)) = (NonZeroU32::new(s.size.0), NonZeroU32::new(s.size.1))
            else {
                return;
            };
            if s.surface.resize(ww, wh).is_err() {
                return;
            }
            let Ok(mut buf) = s.surface.buffer_mut() else {
                return;
            };
            let full = self.full || buf.age() != 1;
            let damage = f.damage.take();
            let flushed_at = f.flushed_at.take();
            let rect = if full {
                Rect {
                    x: 0,
                    y: 0,
                    width: s.size.0,
                    height: s.size.1,
                }
            } else {
                match damage {
                    Some(d) => d.clip(s.size.0, s.size.1),
                    None => return,
                }
            };
            if rect.width == 0 || rect.height == 0 {
                return;
            }
            let bw = s.size.0 as usize;
            for row in rect.y..rect.y + rect.height {
                let start = row as usize * bw + rect.x as usize;
                let Some(dst) = buf.get_mut(start..start + rect.width as usize) else {
                    break;
                };
                // The frame's part of the row, black beyond it.
                let src_start = row as usize * f.width as usize + rect.x as usize;
                let n = if row < f.height {
                    (f.width.saturating_sub(rect.x) as usize).min(dst.len())
                } else {
                    0
                };
                match f.pixels.get(src_start..src_start + n) {
                    Some(src) => {
                        dst[..n].copy_from_slice(src);
                        dst[n..].fill(0);
                    }
                    None => dst.fill(0),
                }
            }
            drop(f);
            let r = softbuffer::Rect {
                x: rect.x,
                y: rect.y,
                width: NonZeroU32::new(rect.width).unwrap_or(NonZeroU32::MIN),
                height: NonZeroU32::new(rect.height).unwrap_or(NonZeroU32::MIN),
            };
            if buf.present_with_damage(&[r]).is_ok() {
                self.full = false;
                if let (Some(trace), Some(t)) = (&self.config.trace, flushed_at) {
                    trace(&format!(
                        "Display: presented {}x{} at ({}, {}), {:.3} ms after the guest's flush",
                        rect.width,
                        rect.height,
                        rect.x,
                        rect.y,
                        t.elapsed().as_secs_f64() * 1000.0
                    ));
                }
            }
        }
    }

    fn key(&mut self, code: u16, state: ElementState, repeat: bool) {
        let value = match (state, repeat) {
            (ElementState::Released, _) => {
                self.pressed.retain(|k| *k != code);
                0
            }
            (ElementState::Pressed, true) => 2,
            (ElementState::Pressed, false) => {
                if !self.pressed.contains(&code) {
                    self.pressed.push(code);
                }
                1
            }
        };
        self.config.keyboard.push(&[ev(EV_KEY, code, value), SYN]);
    }

    fn release_all(&mut self) {
        for code in std::mem::take(&mut self.pressed) {
            self.config.keyboard.push(&[ev(EV_KEY, code, 0), SYN]);
        }
        for (bit, code) in [(1u8, BTN_LEFT), (2, BTN_RIGHT), (4, BTN_MIDDLE)] {
            if self.buttons & bit != 0 {
                self.config.tablet.push(&[ev(EV_KEY, code, 0), SYN]);
            }
        }
        self.buttons = 0;
    }
}

impl ApplicationHandler<UserEvent> for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        let made = self.create(el);
        if let Some((ready, proxy)) = self.ready.take() {
            let failed = made.is_err();
            let _ = ready.send(made.map(|()| proxy));
            if failed {
                el.exit();
            }
        }
    }

    fn user_event(&mut self, el: &ActiveEventLoop, event: UserEvent) {
        match event {
            UserEvent::Damage => self.paint(),
            UserEvent::Exit => {
                self.exiting = true;
                el.exit();
            }
        }
    }

    fn window_event(&mut self, el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => {
                self.closed = true;
                (self.config.on_close)();
                el.exit();
            }
            WindowEvent::Resized(size) => {
                if let Some(s) = self.window.as_mut() {
                    s.size = (size.width, size.height);
                }
                self.full = true;
                self.paint();
            }
            WindowEvent::RedrawRequested => {
                self.full = true;
                self.paint();
            }
            WindowEvent::Focused(false) => self.release_all(),
            WindowEvent::KeyboardInput { event, .. } => {
                if let PhysicalKey::Code(_) = event.physical_key
                    && let Some(code) = event.physical_key.to_scancode()
                    && let Ok(code) = u16::try_from(code)
                    && code > 0
                    && code < 0x100
                {
                    self.key(code, event.state, event.repeat);
                }
            }
            WindowEvent::CursorMoved { position, .. } => {
                // Over the guest's screen; before it has one, over the window.
                let (w, h) = {
                    let f = self.config.screen.frame();
                    match (f.width, self.window.as_ref()) {
                        (0, Some(s)) => s.size,
                        _ => (f.width, f.height),
                    }
                };
                if w > 0 {
                    self.config.tablet.push(&[
                        ev(EV_ABS, ABS_X, tablet_position(position.x, w)),
                        ev(EV_ABS, ABS_Y, tablet_position(position.y, h)),
                        SYN,
                    ]);
                }
            }
            WindowEvent::MouseInput { state, button, .. } => {
                let (bit, code) = match button {
                    MouseButton::Left => (1u8, BTN_LEFT),
                    MouseButton::Right => (2, BTN_RIGHT),
                    MouseButton::Middle => (4, BTN_MIDDLE),
                    _ => return,
                };
                let value = match state {
                    ElementState::Pressed => {
                        self.buttons |= bit;
                        1
                    }
                    ElementState::Released => {
                        self.buttons &= !bit;
                        0
                    }
                };
                self.config.tablet.push(&[ev(EV_KEY, code, value), SYN]);
            }
            WindowEvent::MouseWheel { delta, .. } => {
                let lines = match delta {
                    MouseScrollDelta::LineDelta(_, y) => y.round() as i32,
                    MouseScrollDelta::PixelDelta(p) => (p.y / 40.0).round() as i32,
                };
                if lines != 0 {
                    self.config
                        .tablet
                        .push(&[ev(EV_REL, REL_WHEEL, lines as u32), SYN]);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pointer_is_scaled_to_the_tablets_range_over_the_guests_screen() {
        assert_eq!(tablet_position(0.0, 1280), 0);
        assert_eq!(tablet_position(1279.0, 1280), 32767);
        assert_eq!(tablet_position(5000.0, 1280), 32767);
        assert_eq!(tablet_position(-3.0, 1280), 0);
        assert_eq!(tablet_position(640.0, 1280), 640 * 32767 / 1279);
        assert_eq!(tablet_position(10.0, 1), 0);
    }
}
