// Just enough of node's test runner and assert for the unit tests, so that
// `tsc` checks them without @types/node (one dependency fewer).

declare module 'node:test' {
  export function test(name: string, fn: () => void | Promise<void>): void;
}

declare module 'node:assert/strict' {
  interface Assert {
    (value: unknown, message?: string): asserts value;
    ok(value: unknown, message?: string): asserts value;
    equal<T>(actual: unknown, expected: T, message?: string): asserts actual is T;
    notEqual(actual: unknown, expected: unknown, message?: string): void;
    deepEqual<T>(actual: unknown, expected: T, message?: string): asserts actual is T;
    match(actual: string, expected: RegExp, message?: string): void;
    rejects(promise: Promise<unknown>, check: (error: unknown) => boolean, message?: string): Promise<void>;
  }
  const assert: Assert;
  export default assert;
}
