/**
 * The SDK for plugin authors: `definePlugin` for typed trusted plugins and
 * the test harness that runs a real kernel on a real port.
 */
export { definePlugin } from '../plugin-api/index.js';
export type * from '../plugin-api/index.js';
export { startBext, type Bext, type StartOptions, type HarnessPlugin } from './harness.js';
