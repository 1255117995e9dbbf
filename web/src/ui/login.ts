// The first screen: log in with an id and password, or create an account
// (which tells the new id). Errors are the server's own words.

import { h, setText } from './dom';

export interface LoginActions {
  /** `remember`: stay signed in on this device (a session token). */
  login(id: number, password: string, remember: boolean): Promise<void>;
  register(name: string, password: string): Promise<number>;
}

export function loginScreen(actions: LoginActions): HTMLElement {
  const loginId = h('input', {
    id: 'login-id',
    'data-testid': 'login-id',
    name: 'id',
    inputmode: 'numeric',
    autocomplete: 'username',
    required: true,
  });
  const loginPassword = h('input', {
    id: 'login-password',
    'data-testid': 'login-password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const loginRemember = h('input', {
    id: 'login-remember',
    'data-testid': 'login-remember',
    name: 'remember',
    type: 'checkbox',
    checked: true,
  });
  const loginSubmit = h('button', { type: 'submit', class: 'primary', 'data-testid': 'login-submit' }, 'Log in');
  const loginError = h('p', { class: 'error', role: 'alert', 'data-testid': 'login-error', hidden: true });

  const loginForm = h(
    'form',
    { class: 'card', 'aria-labelledby': 'login-heading', novalidate: true },
    h('h2', { id: 'login-heading' }, 'Log in'),
    h('label', { for: 'login-id' }, 'Your id'),
    loginId,
    h('label', { for: 'login-password' }, 'Password'),
    loginPassword,
    h('label', { class: 'check', for: 'login-remember' }, loginRemember, ' Keep me signed in on this device'),
    loginError,
    loginSubmit,
  );
  loginForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const raw = loginId.value.trim();
    const id = Number(raw);
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(id) || id <= 0) {
      show(loginError, 'Your id is the number you were given when you registered.');
      loginId.focus();
      return;
    }
    if (loginPassword.value === '') {
      show(loginError, 'Enter your password.');
      loginPassword.focus();
      return;
    }
    hide(loginError);
    busy(loginSubmit, true, 'Logging in…');
    actions
      .login(id, loginPassword.value, loginRemember.checked)
      .catch((error: unknown) => {
        show(loginError, messageOf(error));
        loginPassword.select();
      })
      .finally(() => busy(loginSubmit, false, 'Log in'));
  });

  const registerName = h('input', {
    id: 'register-name',
    'data-testid': 'register-name',
    name: 'name',
    autocomplete: 'nickname',
    required: true,
    maxlength: 64,
  });
  const registerPassword = h('input', {
    id: 'register-password',
    'data-testid': 'register-password',
    name: 'new-password',
    type: 'password',
    autocomplete: 'new-password',
    required: true,
  });
  const registerSubmit = h('button', { type: 'submit', 'data-testid': 'register-submit' }, 'Create account');
  const registerResult = h('p', { class: 'result', role: 'status', 'data-testid': 'register-result', hidden: true });
  const registerHint = h('p', { class: 'hint', hidden: true }, 'Log in with it and your password.');
  const registerError = h('p', { class: 'error', role: 'alert', 'data-testid': 'register-error', hidden: true });

  const registerForm = h(
    'form',
    { class: 'card', 'aria-labelledby': 'register-heading', novalidate: true },
    h('h2', { id: 'register-heading' }, 'New here?'),
    h('label', { for: 'register-name' }, 'Name'),
    registerName,
    h('label', { for: 'register-password' }, 'Password'),
    registerPassword,
    registerError,
    registerResult,
    registerHint,
    registerSubmit,
  );
  registerForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = registerName.value.trim();
    if (name === '' || registerPassword.value === '') {
      show(registerError, 'Choose a name and a password.');
      (name === '' ? registerName : registerPassword).focus();
      return;
    }
    hide(registerError);
    hide(registerResult);
    registerHint.hidden = true;
    busy(registerSubmit, true, 'Creating…');
    actions
      .register(name, registerPassword.value)
      .then((id) => {
        registerResult.dataset['id'] = String(id);
        show(registerResult, `Your id is ${id}`);
        registerHint.hidden = false;
        registerPassword.value = '';
      })
      .catch((error: unknown) => show(registerError, messageOf(error)))
      .finally(() => busy(registerSubmit, false, 'Create account'));
  });

  return h(
    'main',
    { class: 'auth' },
    h(
      'header',
      { class: 'brand' },
      h('img', { src: 'favicon.svg', alt: '', width: 48, height: 48 }),
      h('h1', {}, 'clusterchat'),
    ),
    h('div', { class: 'auth-forms' }, loginForm, registerForm),
  );
}

function show(el: HTMLElement, text: string): void {
  setText(el, text);
  el.hidden = false;
}

function hide(el: HTMLElement): void {
  el.hidden = true;
  setText(el, '');
}

function busy(button: HTMLButtonElement, on: boolean, label: string): void {
  button.disabled = on;
  button.setAttribute('aria-busy', String(on));
  setText(button, label);
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
