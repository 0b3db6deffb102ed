#!/usr/bin/env node
// The `bext` executable: loads the TypeScript CLI through tsx.
import { register } from 'tsx/esm/api';

register();
process.env.BEXT_CLI = '1';
await import('./main.ts');
