import quickjs from './index.js';
import { jsSandboxSuite } from './suite.js';

jsSandboxSuite(quickjs, 'quickjs');
