import isolate from './index.js';
import { jsSandboxSuite } from '../quickjs/suite.js';

jsSandboxSuite(isolate, 'isolate');
